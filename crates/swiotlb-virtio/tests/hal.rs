//! The `Hal` with a fake device that really reads and writes the bounce
//! slots at the device address it is given: a forgotten copy (at share or
//! unshare) or a forgotten unshare shows up as wrong data.
//!
//! Every test binds its own `Hal` type (each has its own static slot), so
//! the tests run in parallel threads of one binary.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use swiotlb::provider::{MemoryHooks, Provider, ProviderError, Region};
use swiotlb::translate::Offset;
use swiotlb::{
    Attrs, Device, DmaAddr, DmaMask, GrowConfig, Growth, IoTlb, Platform, Pool, PoolConfig, TlbKind,
};
use swiotlb_host::HeapProvider;
use swiotlb_virtio::{
    AlreadyBound, Engine, HalOptions, PageSource, DEALLOC_NOT_ALLOCATED, PAGE_SIZE,
};
use virtio_drivers::{BufferDirection, Hal};

/// A platform with one fixed restricted tlb named `blk` of `len` bytes,
/// for the life of the test binary.
fn restricted(len: usize) -> &'static Platform {
    restricted_tlb(IoTlb::restricted("blk", heap(len)))
}

fn restricted_tlb(tlb: IoTlb) -> &'static Platform {
    Box::leak(Box::new(Platform::new().with_restricted(tlb)))
}

fn heap(len: usize) -> Pool {
    Pool::new_heap(len, PoolConfig::default()).unwrap()
}

fn blk_device() -> Device {
    Device::new(DmaMask::BITS_64).with_restricted_tlb("blk")
}

/// The fake device's view of the bytes at device address `dma` in the
/// restricted tlb's first pool (identity translation).
fn device_bytes(platform: &Platform, dma: u64, len: usize) -> *mut u8 {
    let pool = platform.restricted()[0].first_pool();
    let off = dma - pool.start().0;
    assert!(
        off + len as u64 <= pool.len() as u64,
        "{dma:#x} not in the pool"
    );
    pool.vaddr().as_ptr().wrapping_add(off as usize)
}

/// The device reads `len` bytes at `dma`.
fn device_read(platform: &Platform, dma: u64, len: usize) -> Vec<u8> {
    let at = device_bytes(platform, dma, len);
    // SAFETY: `at` is `len` bytes of a live bounce mapping's slots in the
    // pool (checked against the pool's bounds), which the device owns
    // until the unshare; no reference to them exists.
    unsafe { std::slice::from_raw_parts(at, len) }.to_vec()
}

/// The device writes `bytes` at `dma`.
fn device_write(platform: &Platform, dma: u64, bytes: &[u8]) {
    let at = device_bytes(platform, dma, bytes.len());
    // SAFETY: as in `device_read`, for writes.
    unsafe { at.copy_from_nonoverlapping(bytes.as_ptr(), bytes.len()) };
}

fn used(platform: &Platform) -> u64 {
    platform.restricted()[0].stats().pool.io_tlb_used
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The buffer as virtio-drivers hands it over: one raw pointer, used for
/// share and unshare alike.
fn raw(v: &mut Vec<u8>) -> NonNull<[u8]> {
    NonNull::slice_from_raw_parts(NonNull::new(v.as_mut_ptr()).unwrap(), v.len())
}

/// The message of a caught panic.
fn message(p: Box<dyn std::any::Any + Send>) -> String {
    match p.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => p.downcast_ref::<&str>().unwrap().to_string(),
    }
}

#[test]
fn driver_to_device_bytes_reach_the_device() {
    swiotlb_virtio::hal!(struct H);
    let platform = restricted(1 << 20);
    H::bind(platform, blk_device(), HalOptions::new()).unwrap();
    let mut buf = pattern(3000, 1);
    let b = raw(&mut buf);
    // SAFETY: `buf` is reached only through `b` until the unshare.
    let dma = unsafe { H::share(b, BufferDirection::DriverToDevice) };
    assert_ne!(
        dma,
        buf.as_ptr().addr() as u64,
        "a restricted device bounces"
    );
    assert_eq!(device_read(platform, dma, 3000), pattern(3000, 1));
    // The device scribbles over a to-device buffer's slots: nothing of it
    // may come back.
    device_write(platform, dma, &[0xee; 3000]);
    // SAFETY: `dma` is `b`'s share; the device is done.
    unsafe { H::unshare(dma, b, BufferDirection::DriverToDevice) };
    assert_eq!(buf, pattern(3000, 1));
    assert_eq!(used(platform), 0);
}

#[test]
fn device_to_driver_bytes_come_back_on_unshare() {
    swiotlb_virtio::hal!(struct H);
    let platform = restricted(1 << 20);
    H::bind(platform, blk_device(), HalOptions::new()).unwrap();
    let mut buf = vec![0u8; 5000];
    let b = raw(&mut buf);
    // SAFETY: `buf` is reached only through `b` until the unshare.
    let dma = unsafe { H::share(b, BufferDirection::DeviceToDriver) };
    device_write(platform, dma, &pattern(5000, 7));
    // SAFETY: `dma` is `b`'s share; the device is done.
    unsafe { H::unshare(dma, b, BufferDirection::DeviceToDriver) };
    assert_eq!(buf, pattern(5000, 7), "the whole mapped length comes back");
    assert_eq!(used(platform), 0);
}

#[test]
fn both_goes_both_ways() {
    swiotlb_virtio::hal!(struct H);
    let platform = restricted(1 << 20);
    H::bind(platform, blk_device(), HalOptions::new()).unwrap();
    let mut buf = pattern(512, 3);
    let b = raw(&mut buf);
    // SAFETY: `buf` is reached only through `b` until the unshare.
    let dma = unsafe { H::share(b, BufferDirection::Both) };
    assert_eq!(device_read(platform, dma, 512), pattern(512, 3));
    device_write(platform, dma, &pattern(512, 9));
    // SAFETY: `dma` is `b`'s share; the device is done.
    unsafe { H::unshare(dma, b, BufferDirection::Both) };
    assert_eq!(buf, pattern(512, 9));
    assert_eq!(used(platform), 0);
}

#[test]
fn dma_alloc_is_zeroed_page_aligned_and_in_the_restricted_pool() {
    swiotlb_virtio::hal!(struct H);
    let platform = restricted(1 << 20);
    H::bind(platform, blk_device(), HalOptions::new()).unwrap();
    // Dirty the slots first, so that zeroing is the allocation's doing.
    let mut buf = vec![0u8; 64 << 10];
    let b = raw(&mut buf);
    // SAFETY: `buf` is reached only through `b` until the unshare.
    let dma = unsafe { H::share(b, BufferDirection::DeviceToDriver) };
    device_write(platform, dma, &[0xff; 64 << 10]);
    // SAFETY: `dma` is `b`'s share; the device is done.
    unsafe { H::unshare(dma, b, BufferDirection::DeviceToDriver) };

    let (paddr, vaddr) = H::dma_alloc(3, BufferDirection::Both);
    assert_ne!(paddr, 0);
    assert_eq!(paddr % PAGE_SIZE as u64, 0);
    assert_eq!(vaddr.as_ptr().addr() % PAGE_SIZE, 0);
    assert_eq!(device_bytes(platform, paddr, 3 * PAGE_SIZE), vaddr.as_ptr());
    // SAFETY: the allocation's three pages, ours until the dealloc.
    let mem = unsafe { std::slice::from_raw_parts(vaddr.as_ptr(), 3 * PAGE_SIZE) };
    assert!(mem.iter().all(|&b| b == 0));
    assert!(used(platform) > 0);
    // A wrong CPU address is refused, and changes nothing.
    let wrong = NonNull::new(vaddr.as_ptr().wrapping_add(PAGE_SIZE)).unwrap();
    // SAFETY: refused before anything is freed (what is tested).
    let r = unsafe { H::dma_dealloc(paddr, wrong, 3) };
    assert_eq!(r, DEALLOC_NOT_ALLOCATED);
    assert!(used(platform) > 0);
    // SAFETY: `paddr` and `vaddr` are the allocation of 3 pages above.
    assert_eq!(unsafe { H::dma_dealloc(paddr, vaddr, 3) }, 0);
    assert_eq!(used(platform), 0);
    // Twice is refused.
    // SAFETY: refused: the allocation is gone (what is tested).
    let r = unsafe { H::dma_dealloc(paddr, vaddr, 3) };
    assert_eq!(r, DEALLOC_NOT_ALLOCATED);
}

/// Counts the page source's hook calls.
#[derive(Default)]
struct Counting {
    shares: AtomicUsize,
    unshares: AtomicUsize,
}

/// The page source's hooks, counting into a shared [`Counting`].
struct CountingHooks(Arc<Counting>);

// SAFETY: the hooks touch no memory at all.
unsafe impl MemoryHooks for CountingHooks {
    fn share(&self, _: &Region) -> Result<(), ProviderError> {
        self.0.shares.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn unshare(&self, _: &Region) -> Result<(), ProviderError> {
        self.0.unshares.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[test]
fn dma_alloc_for_a_device_on_the_default_tlb_comes_from_the_page_source() {
    swiotlb_virtio::hal!(struct H);
    let platform: &'static Platform =
        Box::leak(Box::new(Platform::new().with_default(heap(1 << 20))));
    let hooks = Arc::new(Counting::default());
    // The device sees memory 1 GiB above its physical address.
    let bus = Offset::new(swiotlb::PhysAddr(0), DmaAddr(1 << 30));
    let dev = Device::new(DmaMask::BITS_64)
        .with_force_bounce()
        .with_translate(bus);
    swiotlb_virtio::hal!(struct HOffset<swiotlb::Fast, swiotlb::translate::Offset>);
    let options = HalOptions::new()
        .with_pages(PageSource::new(HeapProvider::new()).with_hooks(CountingHooks(hooks.clone())));
    HOffset::bind(platform, dev, options).unwrap();
    let (paddr, vaddr) = HOffset::dma_alloc(2, BufferDirection::Both);
    assert_ne!(paddr, 0);
    assert_eq!(
        paddr,
        vaddr.as_ptr().addr() as u64 + (1 << 30),
        "translated phys -> dma"
    );
    assert_eq!(vaddr.as_ptr().addr() % PAGE_SIZE, 0);
    // SAFETY: the allocation's two pages, ours until the dealloc.
    let mem = unsafe { std::slice::from_raw_parts(vaddr.as_ptr(), 2 * PAGE_SIZE) };
    assert!(mem.iter().all(|&b| b == 0));
    let pages = HOffset::engine().options().pages.as_ref().unwrap();
    assert_eq!(pages.live(), 1);
    assert_eq!(hooks.shares.load(Ordering::Relaxed), 1);
    assert_eq!(
        platform.default_tlb().unwrap().stats().pool.io_tlb_used,
        0,
        "not from the pool"
    );
    // SAFETY: `paddr` and `vaddr` are the allocation of 2 pages above.
    assert_eq!(unsafe { HOffset::dma_dealloc(paddr, vaddr, 2) }, 0);
    assert_eq!(pages.live(), 0);
    assert_eq!(hooks.unshares.load(Ordering::Relaxed), 1);

    // Without a page source, the default tlb's device gets no coherent
    // memory: the trait's failure value.
    H::bind(platform, Device::new(DmaMask::BITS_64), HalOptions::new()).unwrap();
    let (paddr, vaddr) = H::dma_alloc(1, BufferDirection::Both);
    assert_eq!((paddr, vaddr), (0, NonNull::dangling()));
}

#[test]
fn dma_alloc_failure_returns_zero_and_dangling() {
    swiotlb_virtio::hal!(struct H<swiotlb::Fast, swiotlb::translate::Offset>);
    // The device sees the pool at 4 GiB: aligned for any allocation of a
    // segment, wherever the heap put it.
    let pool = heap(256 << 10);
    let bus = Offset::new(pool.start(), DmaAddr(1 << 32));
    let platform = restricted_tlb(IoTlb::restricted("blk", pool));
    let dev = Device::new(DmaMask::BITS_64)
        .with_restricted_tlb("blk")
        .with_translate(bus);
    H::bind(platform, dev, HalOptions::new()).unwrap();
    let fail = (0, NonNull::dangling());
    assert_eq!(H::dma_alloc(0, BufferDirection::Both), fail, "no pages");
    assert_eq!(
        H::dma_alloc(65, BufferDirection::Both),
        fail,
        "more than a segment"
    );
    assert_eq!(
        H::dma_alloc(usize::MAX, BufferDirection::Both),
        fail,
        "overflow"
    );
    let (paddr, vaddr) = H::dma_alloc(64, BufferDirection::Both);
    assert_ne!(paddr, 0);
    assert_eq!(H::dma_alloc(1, BufferDirection::Both), fail, "full");
    // SAFETY: the allocation of 64 pages above.
    assert_eq!(unsafe { H::dma_dealloc(paddr, vaddr, 64) }, 0);
    assert_eq!(used(platform), 0);
}

/// Regression (Error::DmaZeroInPool): a restricted pool its device sees
/// at device address 0 would have handed out 0, virtio-drivers' failure.
#[test]
fn a_pool_at_device_address_zero_hands_out_nothing() {
    swiotlb_virtio::hal!(struct H<swiotlb::Fast, swiotlb::translate::Offset>);
    let pool = heap(1 << 20);
    let at_zero = Offset::new(pool.start(), DmaAddr(0));
    let platform = restricted_tlb(IoTlb::restricted("blk", pool));
    let dev = Device::new(DmaMask::BITS_64)
        .with_restricted_tlb("blk")
        .with_translate(at_zero);
    H::bind(platform, dev, HalOptions::new()).unwrap();
    assert_eq!(
        H::dma_alloc(1, BufferDirection::Both),
        (0, NonNull::dangling())
    );
    let mut buf = vec![1u8; 100];
    let b = raw(&mut buf);
    // SAFETY: `buf` is reached only through `b`; the share panics.
    let p = catch_unwind(AssertUnwindSafe(|| unsafe {
        H::share(b, BufferDirection::DriverToDevice)
    }));
    let msg = message(p.unwrap_err());
    assert!(msg.contains("covers device address 0"), "{msg}");
    assert_eq!(used(platform), 0);
}

#[test]
fn a_growing_tlb_grows_during_share() {
    swiotlb_virtio::hal!(struct H);
    // Small pools (16-slot segments), so that miri copies little.
    let mut config = GrowConfig::new(32 << 10, 256 << 10);
    config.grow_by = 32 << 10;
    config.pool = PoolConfig::default().with_segment(16);
    let tlb = IoTlb::growing(
        TlbKind::Restricted,
        Growth::new(HeapProvider::new(), config),
    )
    .unwrap()
    .with_name("blk");
    let platform = restricted_tlb(tlb);
    H::bind(platform, blk_device(), HalOptions::new()).unwrap();
    let mut bufs: Vec<Vec<u8>> = (0..3).map(|i| pattern(16 << 10, i)).collect();
    let mut shared = Vec::new();
    for buf in &mut bufs {
        let b = raw(buf);
        // SAFETY: `buf` is reached only through `b` until the unshare.
        shared.push((unsafe { H::share(b, BufferDirection::Both) }, b));
    }
    let stats = platform.restricted()[0].stats();
    assert!(stats.pools_added >= 1, "{stats:?}");
    assert_eq!(platform.restricted()[0].pool_count(), 2);
    for (dma, b) in shared {
        // SAFETY: `dma` is `b`'s share; the device is done.
        unsafe { H::unshare(dma, b, BufferDirection::Both) };
    }
    for (i, buf) in bufs.iter().enumerate() {
        assert_eq!(*buf, pattern(16 << 10, i as u8));
    }
    assert_eq!(platform.restricted()[0].stats().pool.io_tlb_used, 0);
}

/// A buffer shared on one thread and unshared on another.
struct Shared(u64, NonNull<[u8]>, Vec<u8>);
// SAFETY: the pointer is into the `Vec` that travels with it, reached by
// nothing else.
unsafe impl Send for Shared {}

/// A fixed tlb of 32 KiB (16 slots; small, so that miri copies little),
/// waiting up to `wait`.
fn fixed_full_tlb(wait: Duration) -> &'static Platform {
    restricted_tlb(
        IoTlb::restricted("blk", heap(32 << 10)).with_wait_timeout(wait.as_nanos() as u64),
    )
}

#[test]
fn a_full_fixed_tlb_waits_for_another_thread_to_unshare() {
    swiotlb_virtio::hal!(struct H);
    let platform = fixed_full_tlb(Duration::from_secs(30));
    H::bind(platform, blk_device(), HalOptions::new()).unwrap();
    let mut first = vec![1u8; 32 << 10];
    let b = raw(&mut first);
    // SAFETY: `first` is reached only through `b` until the unshare.
    let dma = unsafe { H::share(b, BufferDirection::DeviceToDriver) };
    let held = Shared(dma, b, first);
    let other = std::thread::spawn(move || {
        let held = held;
        // Unshare only once the main thread waits for slots (bounded:
        // a share that never waits fails the test, it does not hang it).
        let tlb = &platform.restricted()[0];
        let deadline = Instant::now() + Duration::from_secs(20);
        while tlb.stats().waiters == 0 {
            assert!(Instant::now() < deadline, "the share never waited");
            std::thread::sleep(Duration::from_millis(1));
        }
        // SAFETY: `held.0` is `held.1`'s share, into `held.2`; done.
        unsafe { H::unshare(held.0, held.1, BufferDirection::DeviceToDriver) };
        held.2
    });
    let mut second = pattern(4096, 5);
    let b = raw(&mut second);
    // SAFETY: `second` is reached only through `b` until the unshare.
    let dma = unsafe { H::share(b, BufferDirection::DriverToDevice) };
    assert_eq!(device_read(platform, dma, 4096), pattern(4096, 5));
    // SAFETY: `dma` is `b`'s share; the device is done.
    unsafe { H::unshare(dma, b, BufferDirection::DriverToDevice) };
    other.join().unwrap();
    let stats = platform.restricted()[0].stats();
    assert_eq!(stats.deferred, 1, "the share waited: {stats:?}");
    assert_eq!(stats.pool.io_tlb_used, 0);
}

#[test]
fn a_full_fixed_tlb_with_no_other_thread_panics_after_its_deadline() {
    swiotlb_virtio::hal!(struct H);
    let wait = Duration::from_millis(50);
    let platform = fixed_full_tlb(wait);
    H::bind(
        platform,
        blk_device(),
        HalOptions::new().with_name("virtio-blk0"),
    )
    .unwrap();
    let mut first = vec![1u8; 32 << 10];
    let b = raw(&mut first);
    // SAFETY: `first` is reached only through `b` until the unshare.
    let dma = unsafe { H::share(b, BufferDirection::DeviceToDriver) };
    let mut second = vec![2u8; 2048];
    let b2 = raw(&mut second);
    let start = Instant::now();
    // SAFETY: `second` is reached only through `b2`; the share panics.
    let p = catch_unwind(AssertUnwindSafe(|| unsafe {
        H::share(b2, BufferDirection::DriverToDevice)
    }));
    assert!(start.elapsed() >= wait, "panicked before the deadline");
    let msg = message(p.unwrap_err());
    for want in [
        "swiotlb",
        "virtio-blk0",
        "tlb 'blk'",
        "requested 2048 bytes",
        "free 0 of 32768 bytes",
        "wait timeout",
    ] {
        assert!(msg.contains(want), "{want:?} missing from: {msg}");
    }
    // SAFETY: `dma` is `b`'s share; the device is done.
    unsafe { H::unshare(dma, b, BufferDirection::DeviceToDriver) };
    assert_eq!(used(platform), 0);
}

#[test]
fn a_full_fixed_tlb_that_may_not_sleep_panics_at_once() {
    swiotlb_virtio::hal!(struct H);
    let platform = fixed_full_tlb(Duration::from_secs(30));
    H::bind(
        platform,
        blk_device(),
        HalOptions::new().with_attrs(Attrs::NONE),
    )
    .unwrap();
    let mut first = vec![1u8; 32 << 10];
    let b = raw(&mut first);
    // SAFETY: `first` is reached only through `b` until the unshare.
    let dma = unsafe { H::share(b, BufferDirection::DeviceToDriver) };
    let mut second = vec![2u8; 100];
    let b2 = raw(&mut second);
    let start = Instant::now();
    // SAFETY: `second` is reached only through `b2`; the share panics.
    let p = catch_unwind(AssertUnwindSafe(|| unsafe {
        H::share(b2, BufferDirection::DriverToDevice)
    }));
    assert!(start.elapsed() < Duration::from_secs(20), "it waited");
    let msg = message(p.unwrap_err());
    assert!(
        msg.contains("may not sleep") && msg.contains("swiotlb buffer is full"),
        "{msg}"
    );
    // SAFETY: `dma` is `b`'s share; the device is done.
    unsafe { H::unshare(dma, b, BufferDirection::DeviceToDriver) };
}

#[test]
fn a_hal_binds_once() {
    swiotlb_virtio::hal!(pub struct H);
    let platform = restricted(256 << 10);
    assert!(H::try_engine().is_none());
    H::bind(platform, blk_device(), HalOptions::new()).unwrap();
    let again = H::bind(platform, blk_device(), HalOptions::new());
    assert_eq!(again, Err(AlreadyBound { hal: "H" }));
    assert!(again
        .unwrap_err()
        .to_string()
        .starts_with("swiotlb-virtio: H is already bound"));
    assert_eq!(H::engine().options().name, "H");
}

#[test]
#[should_panic(expected = "swiotlb-virtio: Unbound used before Unbound::bind")]
fn an_unbound_hal_panics() {
    swiotlb_virtio::hal!(struct Unbound);
    let _ = Unbound::dma_alloc(1, BufferDirection::Both);
}

#[test]
#[should_panic(expected = "this Hal is for transports that use no MMIO")]
fn mmio_phys_to_virt_is_never_used() {
    swiotlb_virtio::hal!(struct H);
    // SAFETY: it panics before any address is used (what is tested).
    let _ = unsafe { H::mmio_phys_to_virt(0x1000_0000, 4096) };
}

#[test]
fn unshare_of_other_memory_panics_and_keeps_the_share() {
    swiotlb_virtio::hal!(struct H);
    let platform = restricted(1 << 20);
    H::bind(platform, blk_device(), HalOptions::new()).unwrap();
    let mut buf = vec![0u8; 300];
    let b = raw(&mut buf);
    // SAFETY: `buf` is reached only through `b` until the unshare.
    let dma = unsafe { H::share(b, BufferDirection::DeviceToDriver) };
    let mut other = vec![0u8; 300];
    let o = raw(&mut other);
    // SAFETY: `o` is valid; the unshare refuses it (what is tested).
    let p = catch_unwind(AssertUnwindSafe(|| unsafe {
        H::unshare(dma, o, BufferDirection::DeviceToDriver)
    }));
    let msg = message(p.unwrap_err());
    assert!(
        msg.contains("unshare of 300 bytes") && msg.contains("not a live"),
        "{msg}"
    );
    assert!(used(platform) > 0, "the share is still live");
    device_write(platform, dma, &[4; 300]);
    // SAFETY: `dma` is `b`'s share; the device is done.
    unsafe { H::unshare(dma, b, BufferDirection::DeviceToDriver) };
    assert_eq!(buf, vec![4; 300]);
    assert_eq!(other, vec![0; 300]);
    assert_eq!(used(platform), 0);
}

/// The probe's sequence, done right: a driver holds a `&mut` to its ring
/// across the dealloc of another allocation and a fresh `dma_alloc`; the
/// fresh allocation zeroes only its own pages, so the ring's reference
/// stays valid (miri checks it), and a ring given back and allocated
/// again comes back zeroed. The unsound version of this sequence (safe
/// code freeing the live ring through `engine()` or `platform()`) no
/// longer compiles: see the `compile_fail` examples on
/// `Engine::dma_dealloc`.
#[test]
fn alloc_dealloc_alloc_keeps_a_live_ring_valid() {
    swiotlb_virtio::hal!(struct H);
    let platform = restricted(256 << 10);
    H::bind(platform, blk_device(), HalOptions::new()).unwrap();
    let (ring_pa, ring_va) = H::dma_alloc(1, BufferDirection::Both);
    assert_ne!(ring_pa, 0);
    // SAFETY: the page is the driver's alone until its dealloc, which
    // comes after the last use of `ring`.
    let ring = unsafe { &mut *ring_va.as_ptr().cast::<[u8; PAGE_SIZE]>() };
    ring[..4].copy_from_slice(&[1, 2, 3, 4]);
    let (other_pa, other_va) = H::dma_alloc(2, BufferDirection::Both);
    assert_ne!(other_pa, 0);
    // SAFETY: `other_*` is the allocation of 2 pages above, unused.
    assert_eq!(unsafe { H::dma_dealloc(other_pa, other_va, 2) }, 0);
    let (again_pa, again_va) = H::dma_alloc(2, BufferDirection::Both);
    assert_ne!(again_pa, 0);
    // The ring was neither freed nor zeroed under its reference.
    ring[4] = 5;
    assert_eq!(ring[..5], [1, 2, 3, 4, 5]);
    // SAFETY: the allocation's two pages, ours until the dealloc.
    let again = unsafe { std::slice::from_raw_parts(again_va.as_ptr(), 2 * PAGE_SIZE) };
    assert!(again.iter().all(|&b| b == 0));
    // SAFETY: `again_*` is the allocation of 2 pages above, unused.
    assert_eq!(unsafe { H::dma_dealloc(again_pa, again_va, 2) }, 0);
    // SAFETY: `ring` is dead: the driver is done with its page.
    assert_eq!(unsafe { H::dma_dealloc(ring_pa, ring_va, 1) }, 0);
    // Its page comes back zeroed to the next allocation.
    let (pa, va) = H::dma_alloc(1, BufferDirection::Both);
    assert_eq!(pa, ring_pa, "the first fit again");
    // SAFETY: the allocation's page, ours until the dealloc.
    let page = unsafe { std::slice::from_raw_parts(va.as_ptr(), PAGE_SIZE) };
    assert!(page.iter().all(|&b| b == 0));
    // SAFETY: the allocation of 1 page above, unused.
    assert_eq!(unsafe { H::dma_dealloc(pa, va, 1) }, 0);
    assert_eq!(used(platform), 0);
}

/// Regression: with a restricted tlb `pages` was never checked, so a
/// one-page allocation freed as 1000 pages (or 0, or `usize::MAX`) was
/// freed. Only the allocation's own size frees it.
#[test]
fn dma_dealloc_of_the_wrong_page_count_frees_nothing_in_the_restricted_pool() {
    swiotlb_virtio::hal!(struct H);
    let platform = restricted(1 << 20);
    H::bind(platform, blk_device(), HalOptions::new()).unwrap();
    let (paddr, vaddr) = H::dma_alloc(1, BufferDirection::Both);
    assert_ne!(paddr, 0);
    let held = used(platform);
    for pages in [0, 2, 1000, usize::MAX / PAGE_SIZE + 1, usize::MAX] {
        // SAFETY: refused before anything is freed (what is tested).
        let r = unsafe { H::dma_dealloc(paddr, vaddr, pages) };
        assert_eq!(r, DEALLOC_NOT_ALLOCATED, "{pages} pages");
        assert_eq!(used(platform), held, "{pages} pages");
    }
    // SAFETY: the allocation of 1 page above.
    assert_eq!(unsafe { H::dma_dealloc(paddr, vaddr, 1) }, 0);
    assert_eq!(used(platform), 0);
}

/// Regression: a page source checked `pages * PAGE_SIZE <= len` with
/// `checked_mul`, which `None` (overflow) and 0 pass: `usize::MAX` and 0
/// pages freed the region. Only the allocation's own page count frees it.
#[test]
fn dma_dealloc_of_the_wrong_page_count_frees_nothing_from_the_page_source() {
    swiotlb_virtio::hal!(struct H);
    let platform: &'static Platform =
        Box::leak(Box::new(Platform::new().with_default(heap(256 << 10))));
    let hooks = Arc::new(Counting::default());
    let options = HalOptions::new()
        .with_pages(PageSource::new(HeapProvider::new()).with_hooks(CountingHooks(hooks.clone())));
    H::bind(platform, Device::new(DmaMask::BITS_64), options).unwrap();
    let (paddr, vaddr) = H::dma_alloc(2, BufferDirection::Both);
    assert_ne!(paddr, 0);
    let pages = H::engine().options().pages.as_ref().unwrap();
    for n in [0, 1, 3, 1000, usize::MAX / PAGE_SIZE + 1, usize::MAX] {
        // SAFETY: refused before anything is freed (what is tested).
        let r = unsafe { H::dma_dealloc(paddr, vaddr, n) };
        assert_eq!(r, DEALLOC_NOT_ALLOCATED, "{n} pages");
        assert_eq!(pages.live(), 1, "{n} pages");
        assert_eq!(hooks.unshares.load(Ordering::Relaxed), 0, "{n} pages");
    }
    // SAFETY: the allocation of 2 pages above.
    assert_eq!(unsafe { H::dma_dealloc(paddr, vaddr, 2) }, 0);
    assert_eq!(pages.live(), 0);
    assert_eq!(hooks.unshares.load(Ordering::Relaxed), 1);
}

/// Hooks whose share always fails (having perhaps shared part of the
/// region), counting both hooks' calls; the unshare fails too if asked.
struct FailingShare(Arc<Counting>, bool);

// SAFETY: the hooks touch no memory at all.
unsafe impl MemoryHooks for FailingShare {
    fn share(&self, r: &Region) -> Result<(), ProviderError> {
        self.0.shares.fetch_add(1, Ordering::Relaxed);
        Err(ProviderError::NoMemory {
            len: r.len,
            below: swiotlb::PhysAddr(u64::MAX),
        })
    }
    fn unshare(&self, r: &Region) -> Result<(), ProviderError> {
        self.0.unshares.fetch_add(1, Ordering::Relaxed);
        if self.1 {
            return Err(ProviderError::NoMemory {
                len: r.len,
                below: swiotlb::PhysAddr(u64::MAX),
            });
        }
        Ok(())
    }
}

/// A heap provider that counts the regions given back to it, and keeps
/// every region it gave out reachable, so that one leaked on purpose is
/// not a leak to miri.
struct CountingProvider {
    heap: HeapProvider,
    freed: Arc<AtomicUsize>,
    given: std::sync::Mutex<Vec<Region>>,
}

// SAFETY: forwards to the heap provider, which upholds the contract.
unsafe impl Provider for CountingProvider {
    fn alloc(&self, len: usize, below: swiotlb::PhysAddr) -> Result<Region, ProviderError> {
        let r = self.heap.alloc(len, below)?;
        self.given.lock().unwrap().push(r);
        Ok(r)
    }
    unsafe fn free(&self, region: Region) {
        self.freed.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `free`, passed on.
        unsafe { self.heap.free(region) }
    }
}

/// A share hook that fails may have shared part of the region (a TDX
/// conversion stopped halfway), so the page source unshares it before it
/// goes back, as `MemoryHooks::share` documents and Linux's
/// `alloc_dma_pages` does (re-encrypt, free only if that worked); when the
/// unshare fails too, the region is leaked, never reused.
#[test]
fn a_region_whose_share_failed_is_unshared_before_it_is_freed() {
    swiotlb_virtio::hal!(struct UnshareWorks);
    swiotlb_virtio::hal!(struct UnshareFails);
    let engines = [
        (
            UnshareWorks::bind as fn(_, _, _) -> _,
            UnshareWorks::engine as fn() -> _,
            false,
        ),
        (UnshareFails::bind, UnshareFails::engine, true),
    ];
    for (bind, engine, unshare_fails) in engines {
        let hooks = Arc::new(Counting::default());
        let freed = Arc::new(AtomicUsize::new(0));
        let provider = CountingProvider {
            heap: HeapProvider::new(),
            freed: freed.clone(),
            given: Default::default(),
        };
        let src = PageSource::new(provider).with_hooks(FailingShare(hooks.clone(), unshare_fails));
        let platform: &'static Platform =
            Box::leak(Box::new(Platform::new().with_default(heap(64 << 10))));
        bind(
            platform,
            Device::new(DmaMask::BITS_64),
            HalOptions::new().with_pages(src),
        )
        .unwrap();
        let engine: &Engine = engine();
        assert_eq!(
            engine.dma_alloc(1, BufferDirection::Both),
            (0, NonNull::dangling())
        );
        assert_eq!(hooks.shares.load(Ordering::Relaxed), 1);
        assert_eq!(hooks.unshares.load(Ordering::Relaxed), 1, "{unshare_fails}");
        let expect_freed = if unshare_fails { 0 } else { 1 };
        assert_eq!(
            freed.load(Ordering::Relaxed),
            expect_freed,
            "{unshare_fails}"
        );
        assert_eq!(engine.options().pages.as_ref().unwrap().live(), 0);
    }
}
