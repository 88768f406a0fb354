//! No stale data: a from-device mapping never shows the device, nor gives
//! back to the driver, bytes of an earlier mapping, in a bare pool, a fixed
//! tlb, a grown pool of a tlb and a platform's restricted tlbs, under both
//! policies; coherent memory is zeroed whatever the slots held before; and
//! with [`PoolConfig::zero_on_free`] nothing of a finished mapping stays in
//! the pool at all, its alignment padding and the tail of its last slot
//! included, which without it keep their old bytes.
//!
//! Linux copies the original into the slots at map time whatever the
//! direction (the fix of CVE-2022-0854), so inside a mapping the device
//! sees the driver's own bytes and the unmap's whole-mapping copy-back
//! returns them where the device wrote nothing. Slot bytes outside the
//! mapping are not copied over: every pool here is exactly four slots, so
//! an earlier mapping of the whole pool leaves its bytes in every slot
//! and any later mapping lands on them, and each test checks what a
//! device reading the whole pool finds there.
//!
//! The tests play the device. Pools are heap memory whose device address
//! is the CPU address of the slot bytes (identity), or, for the device
//! tree, heap memory standing for the reserved physical range.
//!
//! These tests read the pool's bytes outside each mapping (padding, slot
//! tails, other slots) and one writes there on purpose. The misuse checker
//! (feature `checker`) owns those bytes while a mapping lives (its guard
//! bytes) and reports such writes, so with it built in
//! (`--all-features`) this file is left out; `ci/test.sh` and `ci/miri.sh`
//! run it without.
#![cfg(not(feature = "checker"))]

mod common;
#[macro_use]
mod policies;

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use common::{bytes, device_read, device_write, forced, RawBuf};
use swiotlb::provider::{Provider, ProviderError, Region};
use swiotlb::{
    Attrs, Coherent, Device, Direction, DmaAddr, DmaMask, GrowConfig, Growth, IoTlb, MapOptions,
    PhysAddr, Platform, Policy, Pool, PoolConfig, TlbKind,
};
use swiotlb_host::HeapProvider;

both_policies!(
    from_device_never_sees_an_earlier_mapping_in_a_pool,
    from_device_never_sees_an_earlier_mapping_in_a_tlb,
    from_device_never_sees_an_earlier_mapping_in_a_grown_pool,
    from_device_never_sees_an_earlier_mapping_in_a_restricted_tlb,
    safe_mappings_give_back_their_own_bytes_and_scrub_on_drop,
    zero_on_free_clears_padding_and_tail_without_it_they_stay,
    coherent_memory_is_zeroed_after_streaming_and_coherent_use,
    separate_restricted_tlbs_never_share_a_byte,
);

/// Bytes in every pool: four 2 KiB slots, one segment.
const POOL: usize = 8192;
/// Length of the later from-device mapping.
const LEN: usize = 3000;
/// Bytes of it the device writes before the unmap.
const WRITTEN: usize = 1000;
/// Where the later mapping's original sits in its page. With a
/// `min_align_mask` of 0xfff its bounce address keeps these bits, more
/// than a slot: its allocation starts at the second slot of a page, with
/// 0x1a0 bytes of padding before the mapping, the first slot stays out of
/// it, and its last slot has a tail.
const ORIG_PHYS: PhysAddr = PhysAddr(0x7654_39a0);
/// Seeds of the secret an earlier mapping leaves, of what its device
/// wrote, of the later original and of what the later device writes.
const SECRET: u64 = 0x5ec2e7;
const DEV_SECRET: u64 = 0xd5ec;
const ORIG: u64 = 0x0816;
const DEV_WRITE: u64 = 0xd817e;

const DIRS: [Direction; 3] = [
    Direction::ToDevice,
    Direction::Bidirectional,
    Direction::FromDevice,
];

/// Whether every byte of `v` is zero: one comparison with a zeroed
/// block, which miri runs as a single `memcmp`, not a loop per byte.
fn zeroed(v: &[u8]) -> bool {
    static ZEROS: [u8; POOL] = [0; POOL];
    v.len() <= POOL && *v == ZEROS[..v.len()]
}

/// [`bytes`], made once per seed and length and copied after (the
/// generator runs byte by byte under miri, a copy does not).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    /// Patterns made so far, by seed and length.
    type Made = Vec<((u64, usize), Vec<u8>)>;
    thread_local! {
        static MADE: std::cell::RefCell<Made> = const { std::cell::RefCell::new(Vec::new()) };
    }
    MADE.with_borrow_mut(|made| {
        if let Some((_, v)) = made.iter().find(|(k, _)| *k == (seed, len)) {
            return v.clone();
        }
        let v = bytes(seed, len);
        made.push(((seed, len), v.clone()));
        v
    })
}

/// The geometry of every pool: four slots make a pool and a segment.
fn config(zero: bool) -> PoolConfig {
    PoolConfig::DEFAULT.with_segment(4).with_zero_on_free(zero)
}

/// A device with NVMe's `min_align_mask`: its mappings keep the low 12
/// bits of the original's address, so they start after padding.
fn aligned() -> Device {
    forced().with_min_align_mask(0xfff)
}

/// Pool memory as the device sees it: `len` bytes from device address
/// `start`, at CPU address `ptr`.
///
/// # Invariants
/// `ptr` is valid for reads and writes of `len` bytes for `'a` (the pool's
/// memory, which lives as long as the rig the window was taken from), and
/// the CPU reaches those bytes only through the pool and the window.
struct Window<'a> {
    ptr: NonNull<u8>,
    start: u64,
    len: usize,
    _pool: PhantomData<&'a ()>,
}

impl Window<'_> {
    fn of<P: Policy>(pool: &Pool<P>) -> Window<'_> {
        // INVARIANT: a pool's slots are valid for its length while it
        // lives (`Pool::vaddr`), and reached by the CPU only through it.
        Window {
            ptr: pool.vaddr(),
            start: pool.start().0,
            len: pool.len(),
            _pool: PhantomData,
        }
    }

    /// Byte offset of device address `dma`.
    fn off(&self, dma: DmaAddr) -> usize {
        assert!(self.contains(dma), "{dma:?} is not in this pool");
        (dma.0 - self.start) as usize
    }

    fn contains(&self, dma: DmaAddr) -> bool {
        dma.0
            .checked_sub(self.start)
            .is_some_and(|o| o < self.len as u64)
    }

    /// The device reading `len` bytes at `off`.
    fn read(&self, off: usize, len: usize) -> Vec<u8> {
        assert!(off + len <= self.len, "device read past the pool");
        let mut out = vec![0; len];
        // SAFETY:
        // - `[off, off + len)` lies in the window (asserted), valid for
        //   reads (type invariant); `out` is valid for `len` writes;
        // - `out` is a fresh allocation, not pool memory;
        // - this is the device's access, single threaded: no pool call
        //   runs meanwhile and no Rust reference to slot memory exists.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().wrapping_add(off),
                out.as_mut_ptr(),
                len,
            )
        };
        out
    }

    /// The whole pool.
    fn all(&self) -> Vec<u8> {
        self.read(0, self.len)
    }

    /// The device writing `data` at `off`.
    fn write(&self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.len, "device write past the pool");
        // SAFETY: as in `read`, the other way: the range lies in the
        // window, valid for writes, `data` is not pool memory, and
        // nothing else touches the bytes meanwhile.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.ptr.as_ptr().wrapping_add(off),
                data.len(),
            )
        };
    }
}

/// Where the tests map: the raw API of a pool, a tlb or a platform, and
/// the device's view of the pool a mapping lands in.
trait Rig {
    /// A device that maps whole-pool secrets, and one with a
    /// `min_align_mask` (see [`aligned`]), both served by the rig's pool.
    fn devices(&self) -> (&Device, &Device);

    /// Maps `len` bytes of `buf` (at physical address `phys`) for `dev`.
    fn map(
        &self,
        dev: &Device,
        phys: PhysAddr,
        buf: &RawBuf,
        len: usize,
        dir: Direction,
    ) -> DmaAddr;

    /// Unmaps a mapping [`Rig::map`] made; `buf` is still its original.
    fn unmap(&self, dev: &Device, dma: DmaAddr, buf: &RawBuf, len: usize, dir: Direction);

    /// The pool holding `dma`, as the device sees it.
    fn window(&self, dma: DmaAddr) -> Window<'_>;
}

/// Implements [`Rig::map`] and [`Rig::unmap`] over a raw `map_raw` and
/// `unmap_raw` of `$self.$field`.
macro_rules! raw_map_unmap {
    ($field:ident) => {
        fn map(
            &self,
            dev: &Device,
            phys: PhysAddr,
            buf: &RawBuf,
            len: usize,
            dir: Direction,
        ) -> DmaAddr {
            // SAFETY: `buf` outlives the mapping (the test unmaps it before
            // dropping `buf`) and is reached only through its pointer
            // meanwhile; `phys` steers the alignment only.
            unsafe { self.$field.map_raw(dev, phys, buf.ptr(), len, dir) }.unwrap()
        }

        fn unmap(&self, dev: &Device, dma: DmaAddr, buf: &RawBuf, len: usize, dir: Direction) {
            let _ = buf;
            // SAFETY: the original `buf` is alive and unreferenced, and the
            // device (the test) is done with the mapping.
            unsafe { self.$field.unmap_raw(dev, dma, len, dir, Attrs::NONE) }.unwrap();
        }
    };
}

/// A bare pool.
struct PoolRig<P: Policy> {
    pool: Pool<P>,
    devs: (Device, Device),
}

impl<P: Policy> PoolRig<P> {
    fn new(zero: bool) -> Self {
        Self {
            pool: Pool::new_heap(POOL, config(zero)).unwrap(),
            devs: (forced(), aligned()),
        }
    }
}

impl<P: Policy> Rig for PoolRig<P> {
    fn devices(&self) -> (&Device, &Device) {
        (&self.devs.0, &self.devs.1)
    }
    raw_map_unmap!(pool);
    fn window(&self, _: DmaAddr) -> Window<'_> {
        Window::of(&self.pool)
    }
}

/// A fixed tlb over one pool.
struct TlbRig<P: Policy> {
    tlb: IoTlb<P>,
    devs: (Device, Device),
}

impl<P: Policy> TlbRig<P> {
    fn new(zero: bool) -> Self {
        let pool = Pool::new_heap(POOL, config(zero)).unwrap();
        Self {
            tlb: IoTlb::new(TlbKind::Default, pool),
            devs: (forced(), aligned()),
        }
    }
}

impl<P: Policy> Rig for TlbRig<P> {
    fn devices(&self) -> (&Device, &Device) {
        (&self.devs.0, &self.devs.1)
    }
    raw_map_unmap!(tlb);
    fn window(&self, _: DmaAddr) -> Window<'_> {
        Window::of(self.tlb.first_pool())
    }
}

/// A heap provider that remembers the regions it has handed out, so that
/// the test can play the device on a grown pool.
struct Recording {
    heap: HeapProvider,
    regions: Arc<Mutex<Vec<Region>>>,
}

// SAFETY: every region is one the inner `HeapProvider` returned, passed on
// unchanged, and `free` gives it back to that same provider: its
// guarantees (valid, contiguous, below the limit, exclusive) hold as they
// are. The list is a copy of the addresses, used by the test as the
// device's view of pools it is told are alive.
unsafe impl Provider for Recording {
    fn alloc(&self, len: usize, below: PhysAddr) -> Result<Region, ProviderError> {
        let r = self.heap.alloc(len, below)?;
        self.regions.lock().unwrap().push(r);
        Ok(r)
    }

    fn alloc_nowait(&self, len: usize, below: PhysAddr) -> Result<Region, ProviderError> {
        let r = self.heap.alloc_nowait(len, below)?;
        self.regions.lock().unwrap().push(r);
        Ok(r)
    }

    unsafe fn free(&self, region: Region) {
        self.regions.lock().unwrap().retain(|r| *r != region);
        // SAFETY: the caller's obligations: `region` came from this
        // provider, that is from the inner heap provider, unchanged, and
        // is no longer used.
        unsafe { self.heap.free(region) };
    }
}

/// A restricted tlb that grew: its first pool (set up zeroing on free or
/// not) is held whole by a mapping, so every mapping of the test lands in
/// the pool it grew, whose own configuration says not to zero: the first
/// pool's setting carries over ([`IoTlb::with_growth`]).
struct GrownRig<P: Policy> {
    tlb: IoTlb<P>,
    regions: Arc<Mutex<Vec<Region>>>,
    devs: (Device, Device),
    /// The original of the mapping that holds the first pool, kept alive
    /// (and never unmapped: the raw mapping ends with the tlb).
    _hog: RawBuf,
}

impl<P: Policy> GrownRig<P> {
    fn new(zero: bool) -> Self {
        let regions = Arc::new(Mutex::new(Vec::new()));
        let provider = Recording {
            heap: HeapProvider::new(),
            regions: regions.clone(),
        };
        let mut grow = GrowConfig::new(POOL, 2 * POOL);
        grow.grow_by = POOL;
        grow.pool = config(false);
        // Grown pools stay: nothing here waits a day.
        grow.idle = 86_400_000_000_000;
        let first = Pool::new_heap(POOL, config(zero)).unwrap();
        let tlb = IoTlb::restricted("grown", first)
            .with_growth(Growth::new(provider, grow))
            .unwrap();
        let devs = (forced(), aligned());
        let hog = RawBuf::new(&vec![0x11; POOL]);
        // SAFETY: `hog` lives in the rig, which drops it after the tlb
        // (fields drop in order), and nothing else touches it.
        let held = unsafe {
            tlb.map_raw(
                &devs.0,
                PhysAddr(0x1000),
                hog.ptr(),
                POOL,
                Direction::ToDevice,
            )
        }
        .unwrap();
        assert!(tlb.first_pool().contains(PhysAddr(held.0)));
        assert!(tlb.add_pool().unwrap(), "the tlb grows");
        assert_eq!(tlb.pool_count(), 2);
        assert_eq!(regions.lock().unwrap().len(), 1);
        Self {
            tlb,
            regions,
            devs,
            _hog: hog,
        }
    }
}

impl<P: Policy> Rig for GrownRig<P> {
    fn devices(&self) -> (&Device, &Device) {
        (&self.devs.0, &self.devs.1)
    }

    fn map(
        &self,
        dev: &Device,
        phys: PhysAddr,
        buf: &RawBuf,
        len: usize,
        dir: Direction,
    ) -> DmaAddr {
        // SAFETY: as in `raw_map_unmap!`.
        let dma = unsafe { self.tlb.map_raw(dev, phys, buf.ptr(), len, dir) }.unwrap();
        assert!(
            !self.tlb.first_pool().contains(PhysAddr(dma.0)),
            "mapped in the grown pool"
        );
        assert!(self.tlb.pool_index_of(PhysAddr(dma.0)).is_some());
        dma
    }

    fn unmap(&self, dev: &Device, dma: DmaAddr, buf: &RawBuf, len: usize, dir: Direction) {
        let _ = buf;
        // SAFETY: as in `raw_map_unmap!`.
        unsafe { self.tlb.unmap_raw(dev, dma, len, dir, Attrs::NONE) }.unwrap();
    }

    fn window(&self, dma: DmaAddr) -> Window<'_> {
        let regions = self.regions.lock().unwrap();
        let r = regions
            .iter()
            .find(|r| (r.phys.0..r.phys.0 + r.len as u64).contains(&dma.0))
            .expect("a grown pool holds the address");
        // INVARIANT: the region is the memory of a pool of the tlb, alive
        // while the rig is (grown pools are given back only by
        // `maintain`, which these tests never call).
        Window {
            ptr: r.cpu,
            start: r.phys.0,
            len: r.len,
            _pool: PhantomData,
        }
    }
}

/// A platform whose devices each have their restricted tlb; both of the
/// rig's devices are bound to the first one.
struct PlatformRig<P: Policy> {
    platform: Platform<P>,
    devs: (Device, Device),
}

impl<P: Policy> PlatformRig<P> {
    /// Restricted tlbs `names`, each over a pool of its own.
    fn new(zero: bool, names: &[&'static str]) -> Self {
        let mut platform = Platform::<P>::default();
        for name in names {
            let pool = Pool::new_heap(POOL, config(zero)).unwrap();
            platform = platform.with_restricted(IoTlb::restricted(*name, pool));
        }
        let bind = |d: Device| d.with_restricted_tlb(names[0]);
        Self {
            platform,
            devs: (bind(Device::new(DmaMask::BITS_64)), bind(aligned())),
        }
    }
}

impl<P: Policy> Rig for PlatformRig<P> {
    fn devices(&self) -> (&Device, &Device) {
        (&self.devs.0, &self.devs.1)
    }
    raw_map_unmap!(platform);
    fn window(&self, _: DmaAddr) -> Window<'_> {
        let tlb = self.platform.select(&self.devs.0).unwrap();
        assert_eq!(tlb.kind(), TlbKind::Restricted);
        Window::of(tlb.first_pool())
    }
}

/// The earlier mapping: the whole pool of `secret` bytes, mapped `dir`;
/// a device of a from-device or bidirectional mapping overwrites them with
/// its own. Returns the bytes it leaves in the pool, which the driver got
/// back if the direction copies back.
fn leave_secret(rig: &dyn Rig, dir: Direction) -> Vec<u8> {
    let (plain, _) = rig.devices();
    let secret = pattern(SECRET, POOL);
    let buf = RawBuf::new(&secret);
    let dma = rig.map(plain, PhysAddr(0x4000), &buf, POOL, dir);
    let w = rig.window(dma);
    assert_eq!(w.off(dma), 0, "the earlier mapping holds the whole pool");
    assert_eq!(w.all(), secret, "{dir:?}: the device sees the original");
    let left = if dir == Direction::ToDevice {
        secret
    } else {
        let d = pattern(DEV_SECRET, POOL);
        w.write(0, &d);
        d
    };
    rig.unmap(plain, dma, &buf, POOL, dir);
    if dir.copies_to_cpu() {
        assert_eq!(buf.to_vec(), left);
    }
    left
}

/// Outside `[at, at + len)`, the pool holds zeros with zero-on-free, else
/// exactly what the earlier mapping left there (`stale`).
fn assert_outside(pool: &[u8], at: usize, len: usize, stale: &[u8], zero: bool, what: &str) {
    let end = at + len;
    if zero {
        assert!(zeroed(&pool[..at]), "{what}: padding");
        assert!(zeroed(&pool[end..]), "{what}: tail");
    } else {
        assert_eq!(pool[..at], stale[..at], "{what}: padding keeps old bytes");
        assert_eq!(pool[end..], stale[end..], "{what}: tail keeps old bytes");
    }
}

/// An earlier mapping of each direction leaves its bytes (or, with
/// zero-on-free, none); a from-device mapping then lands on its slots.
/// The device sees the driver's original there, never the earlier bytes;
/// the device writes only the first [`WRITTEN`] bytes, and the unmap gives
/// the driver those and its own bytes for the rest. Around the mapping,
/// in its padding and tail and in the slots it does not use, the device
/// finds the earlier bytes unless the pool zeroes on free.
fn earlier_mapping_stays_hidden(rig: &dyn Rig, zero: bool) {
    let (_, dev) = rig.devices();
    for dir in DIRS {
        let what = format!("after a {dir:?} mapping, zero on free {zero}");
        let stale = leave_secret(rig, dir);
        // The driver fills its buffer, then hands it over.
        let orig = pattern(ORIG, LEN);
        let buf = RawBuf::new(&[0; LEN]);
        buf.write(0, &orig);
        let dma = rig.map(dev, ORIG_PHYS, &buf, LEN, Direction::FromDevice);
        let w = rig.window(dma);
        let at = w.off(dma);
        // The earlier mapping held every slot, so this one is on its slots;
        // the mask put it past the first slot and some padding, and its
        // last slot has a tail.
        assert_eq!(dma.0 & 0xfff, ORIG_PHYS.0 & 0xfff, "{what}");
        assert!(at > 2048 && at + LEN < POOL && (at + LEN) % 2048 != 0);
        let seen = w.all();
        assert_eq!(
            seen[at..at + LEN],
            orig[..],
            "{what}: the device sees the original"
        );
        assert_outside(&seen, at, LEN, &stale, zero, &what);

        let written = pattern(DEV_WRITE, WRITTEN);
        w.write(at, &written);
        rig.unmap(dev, dma, &buf, LEN, Direction::FromDevice);
        let mut want = orig.clone();
        want[..WRITTEN].copy_from_slice(&written);
        let back = buf.to_vec();
        assert_eq!(back, want, "{what}: the driver gets its own bytes back");
        assert_ne!(back[WRITTEN..], stale[at + WRITTEN..at + LEN], "{what}");

        // After the unmap: nothing left with zero-on-free; without it, the
        // mapping's last bytes and everything around them.
        let after = w.all();
        if zero {
            assert!(zeroed(&after), "{what}: scrubbed");
        } else {
            assert_eq!(after[at..at + WRITTEN], written[..], "{what}");
            assert_eq!(after[at + WRITTEN..at + LEN], orig[WRITTEN..], "{what}");
            assert_outside(&after, at, LEN, &stale, zero, &what);
        }
    }
}

/// A bare pool.
fn from_device_never_sees_an_earlier_mapping_in_a_pool<P: Policy>() {
    for zero in [false, true] {
        let rig = PoolRig::<P>::new(zero);
        assert_eq!(rig.pool.zeroes_on_free(), zero);
        earlier_mapping_stays_hidden(&rig, zero);
        assert_eq!(rig.pool.used_slots(), 0);
    }
}

/// A fixed tlb over one pool.
fn from_device_never_sees_an_earlier_mapping_in_a_tlb<P: Policy>() {
    for zero in [false, true] {
        let rig = TlbRig::<P>::new(zero);
        earlier_mapping_stays_hidden(&rig, zero);
    }
}

/// A pool a restricted tlb grew, configured not to zero: it zeroes when
/// the tlb's first pool does.
fn from_device_never_sees_an_earlier_mapping_in_a_grown_pool<P: Policy>() {
    for zero in [false, true] {
        let rig = GrownRig::<P>::new(zero);
        assert_eq!(rig.tlb.grow_config().unwrap().pool.zero_on_free, zero);
        earlier_mapping_stays_hidden(&rig, zero);
    }
}

/// A platform's restricted tlb, through the platform's raw API.
fn from_device_never_sees_an_earlier_mapping_in_a_restricted_tlb<P: Policy>() {
    for zero in [false, true] {
        let rig = PlatformRig::<P>::new(zero, &["restricted@0", "restricted@1"]);
        earlier_mapping_stays_hidden(&rig, zero);
    }
}

/// The safe API: a bidirectional mapping's device leaves its bytes; a
/// from-device mapping of a `Vec` on the same slots shows the device the
/// `Vec`'s bytes and gives them back where the device wrote nothing. A
/// mapping dropped without an unmap releases its slots too, scrubbed with
/// zero-on-free.
fn safe_mappings_give_back_their_own_bytes_and_scrub_on_drop<P: Policy>() {
    for zero in [false, true] {
        let pool = Pool::<P>::new_heap(POOL, config(zero)).unwrap();
        let (plain, dev) = (forced(), aligned());
        let m = pool
            .map(&plain, pattern(SECRET, POOL), Direction::Bidirectional)
            .unwrap();
        assert_eq!(m.dma_addr().0, pool.start().0);
        let stale = pattern(DEV_SECRET, POOL);
        device_write(&pool, 0, &stale);
        assert_eq!(m.unmap(), stale);

        let orig = pattern(ORIG, LEN);
        let m = pool.map(&dev, orig.clone(), Direction::FromDevice).unwrap();
        let at = (m.dma_addr().0 - pool.start().0) as usize;
        let seen = device_read(&pool, 0, POOL);
        assert_eq!(seen[at..at + LEN], orig[..], "zero on free {zero}");
        if at > 0 || at + LEN < POOL {
            assert_outside(&seen, at, LEN, &stale, zero, "safe");
        }
        let written = pattern(DEV_WRITE, WRITTEN);
        device_write(&pool, at, &written);
        let mut want = orig.clone();
        want[..WRITTEN].copy_from_slice(&written);
        assert_eq!(m.unmap(), want, "zero on free {zero}");

        // Dropped, not unmapped: the device's bytes stay in the pool
        // unless it zeroes on free.
        let m = pool
            .map(&plain, vec![0x77; POOL], Direction::FromDevice)
            .unwrap();
        device_write(&pool, 0, &stale);
        drop(m);
        let after = device_read(&pool, 0, POOL);
        if zero {
            assert!(zeroed(&after));
        } else {
            assert_eq!(after, stale);
        }
    }
}

/// With zero-on-free every slot of a finished mapping reads zero, the
/// padding before the bounce address and the tail of its last slot
/// included, even where the device wrote outside the mapping; without it
/// they keep what was there. The allocation is read from the pool's own
/// account of it ([`Pool::bounce_raw`]).
fn zero_on_free_clears_padding_and_tail_without_it_they_stay<P: Policy>() {
    for zero in [false, true] {
        let pool = Pool::<P>::new_heap(POOL, config(zero)).unwrap();
        let dev = aligned();
        let orig = pattern(ORIG, LEN);
        let buf = RawBuf::new(&orig);
        // SAFETY: `buf` outlives the mapping and is reached only through
        // its pointer; the physical address steers the alignment only.
        let b = unsafe {
            pool.bounce_raw(
                &dev,
                ORIG_PHYS,
                buf.ptr(),
                LEN,
                Attrs::NONE,
                MapOptions::new(),
            )
        }
        .unwrap();
        let first = b.start as usize * 2048;
        let end = (b.start + b.nslots) as usize * 2048;
        let at = (b.phys.0 - pool.start().0) as usize;
        assert!(first < at && at + LEN < end, "padding and a tail");
        // The device writes the whole allocation, padding and tail too.
        let scribble = pattern(DEV_SECRET, end - first);
        device_write(&pool, first, &scribble);
        // SAFETY: as above; the device is done.
        unsafe { pool.unmap_raw(&dev, b.dma, LEN, Direction::FromDevice, Attrs::NONE) }.unwrap();
        assert_eq!(buf.to_vec(), scribble[at - first..at - first + LEN]);
        let slots = device_read(&pool, first, end - first);
        if zero {
            assert!(zeroed(&slots), "every byte of every slot");
        } else {
            assert_eq!(
                slots, scribble,
                "padding, mapping and tail keep their bytes"
            );
        }
    }
}

/// Reads a coherent allocation through its CPU address.
fn coherent_bytes(c: &Coherent) -> Vec<u8> {
    let mut out = vec![0; c.size];
    // SAFETY: a live coherent allocation is valid for reads of `size`
    // bytes at `cpu`; `out` is a fresh buffer; nothing writes it meanwhile.
    unsafe { std::ptr::copy_nonoverlapping(c.cpu.as_ptr(), out.as_mut_ptr(), c.size) };
    out
}

/// Writes `data` into a coherent allocation through its CPU address.
fn coherent_write(c: &Coherent, data: &[u8]) {
    assert!(data.len() <= c.size);
    // SAFETY: a live coherent allocation is valid for writes of `size`
    // bytes at `cpu`; `data` is not pool memory; nothing else touches the
    // allocation meanwhile.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), c.cpu.as_ptr(), data.len()) };
}

/// Coherent memory comes zeroed (Linux's `dma_alloc_coherent` zeroes what
/// it returns), on slots a streaming mapping's device just wrote and on
/// slots a freed coherent allocation filled, in a pool, a tlb and a
/// restricted tlb. With zero-on-free the free itself leaves zeros; without
/// it the freed allocation's bytes stay in the pool until the next
/// allocation zeroes them.
fn coherent_memory_is_zeroed_after_streaming_and_coherent_use<P: Policy>() {
    for zero in [false, true] {
        let pool = PoolRig::<P>::new(zero);
        let p = &pool.pool;
        check_coherent(
            &pool,
            zero,
            |d, n| p.alloc_coherent(d, n).unwrap(),
            |d, c| {
                // SAFETY: `c` is live, and nothing uses its memory after this.
                unsafe { p.free_coherent(d, c.dma, c.size) }.unwrap()
            },
        );
        let tlb = TlbRig::<P>::new(zero);
        let t = &tlb.tlb;
        check_coherent(
            &tlb,
            zero,
            |d, n| t.alloc_coherent(d, n).unwrap(),
            |d, c| {
                // SAFETY: as above.
                unsafe { t.free_coherent(d, c.dma, c.size) }.unwrap()
            },
        );
        let plat = PlatformRig::<P>::new(zero, &["restricted@0"]);
        let pl = &plat.platform;
        check_coherent(
            &plat,
            zero,
            |d, n| pl.alloc_coherent(d, n).unwrap(),
            |d, c| {
                // SAFETY: as above.
                unsafe { pl.free_coherent(d, c.dma, c.size) }.unwrap()
            },
        );
    }
}

fn check_coherent(
    rig: &dyn Rig,
    zero: bool,
    alloc: impl Fn(&Device, usize) -> Coherent,
    free: impl Fn(&Device, Coherent),
) {
    let (plain, _) = rig.devices();
    // After streaming use: a device wrote every slot.
    let stale = leave_secret(rig, Direction::Bidirectional);
    let c = alloc(plain, 4096);
    let w = rig.window(c.dma);
    let at = w.off(c.dma);
    assert!(zeroed(&coherent_bytes(&c)), "after streaming");
    assert_eq!(w.read(at, 4096), vec![0; 4096], "the device sees zeros");
    assert_outside(&w.all(), at, 4096, &stale, zero, "beside coherent");
    // After coherent use: two allocations fill the pool, each with a
    // secret, and are freed.
    let d = alloc(plain, 4096);
    let both = [c, d];
    let mut left = vec![0; POOL];
    for (i, c) in both.iter().enumerate() {
        let secret = pattern(SECRET + i as u64, 4096);
        coherent_write(c, &secret);
        let at = w.off(c.dma);
        left[at..at + 4096].copy_from_slice(&secret);
    }
    for c in both {
        free(plain, c);
    }
    if zero {
        assert!(zeroed(&w.all()), "scrubbed at free");
    } else {
        assert_eq!(w.all(), left, "freed allocations keep their bytes");
    }
    let c = alloc(plain, 4096);
    assert!(zeroed(&coherent_bytes(&c)), "after coherent");
    free(plain, c);
}

/// Devices on separate restricted tlbs: whatever device A's mappings and
/// coherent memory hold, device B's pool holds only B's bytes and zeros,
/// and A's pool is untouched by B.
fn separate_restricted_tlbs_never_share_a_byte<P: Policy>() {
    for zero in [false, true] {
        let rig = PlatformRig::<P>::new(zero, &["a", "b"]);
        let b = Device::new(DmaMask::BITS_64)
            .with_restricted_tlb("b")
            .with_min_align_mask(0xfff);
        let pool_b = rig.platform.select(&b).unwrap().first_pool();
        let wb = Window::of(pool_b);
        let before_b = wb.all();
        assert!(zeroed(&before_b), "fresh heap memory");

        // Device A: a secret of each direction, and coherent memory over
        // the last one's bytes.
        let mut left_a = Vec::new();
        for dir in DIRS {
            left_a = leave_secret(&rig, dir);
        }
        let (a, _) = rig.devices();
        let c = rig.platform.alloc_coherent(a, 4096).unwrap();
        let wa = rig.window(c.dma);
        let c_at = wa.off(c.dma);
        let secret = pattern(SECRET, 4096);
        coherent_write(&c, &secret);
        // SAFETY: `c` is live, and nothing uses its memory after this.
        unsafe { rig.platform.free_coherent(a, c.dma, c.size) }.unwrap();
        if !zero {
            left_a[c_at..c_at + 4096].copy_from_slice(&secret);
        }
        let a_before = wa.all();
        if zero {
            assert!(zeroed(&a_before), "A's pool scrubbed");
        } else {
            assert_eq!(a_before, left_a, "A's pool keeps A's bytes");
        }
        assert_eq!(wb.all(), before_b, "B's pool untouched by A");

        // Device B: its own tlb, a from-device mapping written in part.
        let orig = pattern(ORIG, LEN);
        let buf = RawBuf::new(&orig);
        let dma = rig.map(&b, ORIG_PHYS, &buf, LEN, Direction::FromDevice);
        assert!(!wa.contains(dma));
        let at = wb.off(dma);
        let mut want = vec![0; POOL];
        want[at..at + LEN].copy_from_slice(&orig);
        assert_eq!(wb.all(), want, "B sees its original and zeros");
        let written = pattern(DEV_WRITE, WRITTEN);
        wb.write(at, &written);
        rig.unmap(&b, dma, &buf, LEN, Direction::FromDevice);
        let mut back = orig.clone();
        back[..WRITTEN].copy_from_slice(&written);
        assert_eq!(buf.to_vec(), back);
        assert_eq!(wa.all(), a_before, "A's pool untouched by B");
        if zero {
            assert!(zeroed(&wb.all()), "B's pool scrubbed");
        } else {
            want[at..at + WRITTEN].copy_from_slice(&written);
            assert_eq!(wb.all(), want, "B's pool holds B's bytes only");
        }
    }
}

/// Boxes given up as pool memory, freed when this drops.
#[cfg(feature = "fdt")]
struct Regions(Vec<*mut [u8]>);

#[cfg(feature = "fdt")]
impl Drop for Regions {
    fn drop(&mut self) {
        for raw in self.0.drain(..) {
            // SAFETY: `raw` came from `Box::into_raw` and is freed once,
            // here, after the pools over it are gone (the owner declares
            // this before them).
            drop(unsafe { Box::from_raw(raw) });
        }
    }
}

/// A platform read from a device tree with a restricted pool per device,
/// given a configuration that zeroes on free: every restricted tlb zeroes,
/// and the device tree needs no property for it.
#[cfg(feature = "fdt")]
#[test]
fn device_tree_restricted_tlbs_take_zero_on_free_from_the_config() {
    use vm_fdt::FdtWriter;

    let mut w = FdtWriter::new().unwrap();
    let root = w.begin_node("").unwrap();
    w.property_u32("#address-cells", 2).unwrap();
    w.property_u32("#size-cells", 2).unwrap();
    let rmem = w.begin_node("reserved-memory").unwrap();
    w.property_u32("#address-cells", 2).unwrap();
    w.property_u32("#size-cells", 2).unwrap();
    w.property_null("ranges").unwrap();
    for (i, base) in [0x5000_0000u64, 0x5001_0000].into_iter().enumerate() {
        let n = w.begin_node(&format!("restricted@{base:x}")).unwrap();
        w.property_string("compatible", "restricted-dma-pool")
            .unwrap();
        w.property_array_u64("reg", &[base, POOL as u64]).unwrap();
        w.property_u32("phandle", i as u32 + 1).unwrap();
        w.end_node(n).unwrap();
    }
    w.end_node(rmem).unwrap();
    let soc = w.begin_node("soc").unwrap();
    w.property_u32("#address-cells", 1).unwrap();
    w.property_u32("#size-cells", 1).unwrap();
    for i in 0..2u32 {
        let n = w.begin_node(&format!("virtio@{i}")).unwrap();
        w.property_array_u32("memory-region", &[i + 1]).unwrap();
        w.end_node(n).unwrap();
    }
    w.end_node(soc).unwrap();
    w.end_node(root).unwrap();
    let blob = w.finish().unwrap();
    let dt = swiotlb::dt::parse(&blob).unwrap();

    // Heap memory standing for each reserved range, alive for the test
    // and reached only through the raw pointer each box was given up for.
    let mut regions = Regions(Vec::new());
    let mut memory = |_: PhysAddr, len: usize| {
        let raw = Box::into_raw(vec![0u8; len].into_boxed_slice());
        regions.0.push(raw);
        NonNull::new(raw.cast::<u8>())
    };
    for zero in [false, true] {
        // SAFETY: each region is a box given up to `regions`, which frees
        // it only when dropped, after the platform (declared before it);
        // nothing but the pool touches it.
        let platform =
            unsafe { Platform::<swiotlb::Fast>::from_dt(&dt, config(zero), &mut memory) }.unwrap();
        assert_eq!(platform.restricted().len(), 2);
        for t in platform.restricted() {
            assert_eq!(t.first_pool().zeroes_on_free(), zero);
        }
        let bind = |d: Device| platform.bind(d, "virtio@0");
        let rig = PlatformRig {
            devs: (bind(Device::new(DmaMask::BITS_64)), bind(aligned())),
            platform,
        };
        earlier_mapping_stays_hidden(&rig, zero);
    }
}
