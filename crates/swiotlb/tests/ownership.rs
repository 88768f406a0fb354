//! The safe API with every `DmaBuffer` the crate implements: a buffer is
//! taken apart before any pointer to it is used, so moving the buffer into
//! a mapping, and the mapping around, never invalidates the pointer the
//! copies go through. Run under miri with Stacked and Tree Borrows
//! (`ci/miri.sh`): with the buffer value kept inside the mapping, a
//! `Box<[u8]>` or a `&'static mut [u8]` is retagged by the move, and the
//! copy-back of a from-device unmap writes through a dead pointer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use swiotlb::tlb::{GrowConfig, ManualClock};
use swiotlb::Growth;
use swiotlb::TlbKind;
use swiotlb::{
    Attrs, Device, Direction, DmaBuffer, DmaMask, IoTlb, Mapping, Platform, Policy, Pool,
    PoolConfig,
};
use swiotlb_host::HeapProvider;

const LEN: usize = 3000;

/// A buffer type under test: made from bytes, and turned back into them.
trait TestBuf: DmaBuffer + Sized + Send + std::fmt::Debug {
    fn make(bytes: Vec<u8>) -> Self;
    fn bytes(self) -> Vec<u8>;
}

impl TestBuf for Vec<u8> {
    fn make(bytes: Vec<u8>) -> Self {
        bytes
    }
    fn bytes(self) -> Vec<u8> {
        self
    }
}

impl TestBuf for Box<[u8]> {
    fn make(bytes: Vec<u8>) -> Self {
        bytes.into_boxed_slice()
    }
    fn bytes(self) -> Vec<u8> {
        self.into_vec()
    }
}

impl TestBuf for &'static mut [u8] {
    fn make(bytes: Vec<u8>) -> Self {
        let raw = Box::into_raw(bytes.into_boxed_slice());
        LEAKED.with(|l| l.borrow_mut().push(raw));
        // SAFETY: `raw` is a live box's pointer; the slice is its only
        // reference until `free_leaked` frees the box, after the test is
        // done with every slice (a mapping dropped unmapped drops its
        // slice without freeing it, as for any `&'static mut`).
        unsafe { &mut *raw }
    }
    fn bytes(self) -> Vec<u8> {
        self.to_vec()
    }
}

std::thread_local! {
    /// The boxes `make` leaked, per test thread.
    static LEAKED: std::cell::RefCell<Vec<*mut [u8]>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Frees every box `make` leaked (miri reports leaks); no slice of them
/// may be live.
fn free_leaked() {
    for p in LEAKED.with(|l| std::mem::take(&mut *l.borrow_mut())) {
        // SAFETY: `p` came from `Box::into_raw` in `make`; the slice made
        // from it is gone (this function's contract); the box is rebuilt
        // once.
        drop(unsafe { Box::from_raw(p) });
    }
}

fn original(tag: u8) -> Vec<u8> {
    (0..LEN).map(|i| (i as u8).wrapping_mul(7) ^ tag).collect()
}

fn device_bytes(tag: u8) -> Vec<u8> {
    (0..LEN)
        .map(|i| (i as u8).wrapping_mul(13) ^ !tag)
        .collect()
}

fn forced() -> Device {
    Device::new(DmaMask::BITS_64).with_force_bounce()
}

/// Plays the device on a bounced mapping: checks the slots hold what the
/// CPU mapped and writes the device's answer.
fn device_writes<B: DmaBuffer, P: Policy>(m: &Mapping<'_, B, P>, tag: u8) {
    assert!(m.is_bounced());
    let p = m.device_ptr().as_ptr();
    let mut seen = vec![0; LEN];
    // SAFETY: the slots of a live mapping hold `LEN` bytes; this test is
    // the device, their only other user, and holds no reference to them.
    unsafe { std::ptr::copy_nonoverlapping(p, seen.as_mut_ptr(), LEN) };
    assert!(seen == original(tag), "the map did not copy the buffer in");
    let answer = device_bytes(tag);
    // SAFETY: as above, for writes.
    unsafe { std::ptr::copy_nonoverlapping(answer.as_ptr(), p, LEN) };
}

/// Moves a mapping through a function and a collection, as a driver
/// keeps it in its own structures.
fn moved<T>(m: T) -> T {
    let mut held = vec![m];
    let m = held.pop().unwrap();
    Box::new(m).into_inner()
}

trait IntoInner<T> {
    fn into_inner(self) -> T;
}

impl<T> IntoInner<T> for Box<T> {
    fn into_inner(self) -> T {
        *self
    }
}

/// Every CPU-side operation of a safe mapping, each after a move: sync,
/// read, write, unmap. The device's bytes must come back, and the CPU's
/// writes must reach the device.
fn exercise<B: TestBuf, P: Policy>(m: Mapping<'_, B, P>, tag: u8) {
    device_writes(&m, tag);
    let mut m = moved(m);
    m.sync_for_cpu(0, LEN).unwrap();
    let mut got = vec![0; LEN];
    m.read(0, &mut got).unwrap();
    assert!(got == device_bytes(tag), "sync_for_cpu did not copy back");
    let mut m = moved(m);
    m.write(10, &[0xee; 5]).unwrap();
    m.sync_for_device(10, 5).unwrap();
    // SAFETY: the device side of the live mapping, as in `device_writes`.
    let slots = unsafe { std::slice::from_raw_parts(m.device_ptr().as_ptr(), LEN) }.to_vec();
    // Only a mapping the CPU writes for is copied to the device.
    let mut want = device_bytes(tag);
    if m.direction() == Direction::Bidirectional {
        want[10..15].copy_from_slice(&[0xee; 5]);
    }
    assert_eq!(slots[10..15], want[10..15], "sync_for_device");
    let m = moved(m);
    let back = m.unmap().bytes();
    assert!(back == want, "unmap did not copy the device's bytes back");
}

fn pool_maps_every_buffer_type<B: TestBuf>() {
    let pool: Pool = Pool::new_heap(1 << 20, PoolConfig::default()).unwrap();
    let dev = forced();
    for dir in [Direction::FromDevice, Direction::Bidirectional] {
        let m = pool.map(&dev, B::make(original(1)), dir).unwrap();
        exercise(m, 1);
    }
    // Dropped without unmapping: the buffer is dropped once, put back
    // together.
    let m = pool
        .map(&dev, B::make(original(2)), Direction::FromDevice)
        .unwrap();
    drop(moved(m));
    // A direct mapping moves too.
    let direct = Device::new(DmaMask::BITS_64);
    let mut m = moved(
        pool.map(&direct, B::make(original(3)), Direction::ToDevice)
            .unwrap(),
    );
    assert!(!m.is_bounced());
    m.write(0, &[9; 4]).unwrap();
    let back = moved(m).unmap().bytes();
    assert_eq!(&back[..4], &[9; 4]);
    assert_eq!(pool.stats().io_tlb_used, 0);
}

#[test]
fn a_from_device_unmap_copies_back_into_a_moved_vec() {
    pool_maps_every_buffer_type::<Vec<u8>>();
}

#[test]
fn a_from_device_unmap_copies_back_into_a_moved_box() {
    pool_maps_every_buffer_type::<Box<[u8]>>();
}

#[test]
fn a_from_device_unmap_copies_back_into_a_moved_static_slice() {
    pool_maps_every_buffer_type::<&'static mut [u8]>();
    free_leaked();
}

fn sg_and_tlbs_with<B: TestBuf>() {
    let dev = forced();
    // Scatter-gather: every entry, moved as a list.
    let pool: Pool = Pool::new_heap(1 << 20, PoolConfig::default()).unwrap();
    let bufs = (0..3).map(|i| B::make(original(10 + i))).collect();
    let maps = moved(pool.map_sg(&dev, bufs, Direction::FromDevice).unwrap());
    for (i, m) in maps.into_iter().enumerate() {
        exercise(m, 10 + i as u8);
    }
    // A failed list gives every buffer back whole.
    let bufs = vec![B::make(original(20)), B::make(vec![0; 1 << 21])];
    let f = pool.map_sg(&dev, bufs, Direction::FromDevice).unwrap_err();
    let mut back = f.buffer.into_iter();
    assert!(back.next().unwrap().bytes() == original(20));
    assert_eq!(back.next().unwrap().bytes().len(), 1 << 21);

    // A restricted tlb, and a platform choosing it.
    let restricted: IoTlb =
        IoTlb::restricted("r", Pool::new_heap(1 << 20, PoolConfig::default()).unwrap());
    let plain = Device::new(DmaMask::BITS_64);
    exercise(
        restricted
            .map(&plain, B::make(original(30)), Direction::FromDevice)
            .unwrap(),
        30,
    );
    let platform = Platform::new().with_restricted(IoTlb::restricted(
        "r",
        Pool::new_heap(1 << 20, PoolConfig::default()).unwrap(),
    ));
    let bound = plain.clone().with_restricted_tlb("r");
    exercise(
        platform
            .map(&bound, B::make(original(31)), Direction::FromDevice)
            .unwrap(),
        31,
    );

    // A growing tlb, mapped at once and through its future.
    let config = GrowConfig::new(1 << 20, 4 << 20);
    let tlb = IoTlb::growing(TlbKind::Default, Growth::new(HeapProvider::new(), config))
        .map(|t| t.with_clock(Arc::new(ManualClock::new())))
        .unwrap();
    let ddev = forced();
    let m = tlb.map_with_attrs(
        &ddev,
        B::make(original(40)),
        Direction::FromDevice,
        Attrs::NONE,
    );
    exercise(m.unwrap(), 40);
    let fut = tlb.map_async(&ddev, B::make(original(41)), Direction::FromDevice);
    exercise(moved(block_on(moved(fut))).unwrap(), 41);
}

#[test]
fn scatter_gather_tlbs_and_futures_keep_every_buffer_type_valid() {
    sg_and_tlbs_with::<Vec<u8>>();
    sg_and_tlbs_with::<Box<[u8]>>();
    sg_and_tlbs_with::<&'static mut [u8]>();
    free_leaked();
}

/// A queued `map_async` request copies from its buffer when slots free
/// up; the future holding the buffer moves between its polls.
fn a_queued_future_moves_between_polls<B: TestBuf>() {
    let mut config = GrowConfig::new(256 << 10, 256 << 10);
    config.grow_by = 256 << 10;
    let tlb = IoTlb::growing(TlbKind::Default, Growth::new(HeapProvider::new(), config))
        .map(|t| t.with_clock(Arc::new(ManualClock::new())))
        .unwrap();
    let ddev = forced();
    let fill = tlb
        .map_with_attrs(
            &ddev,
            vec![0u8; 256 << 10],
            Direction::ToDevice,
            Attrs::NONE,
        )
        .unwrap();
    let mut fut = tlb.map_async(&ddev, B::make(original(50)), Direction::FromDevice);
    let waker = Waker::from(Arc::new(Nop));
    let mut cx = Context::from_waker(&waker);
    assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
    let fut = moved(fut);
    // The unmap completes the queued request: its copy reads the buffer
    // the moved future holds.
    drop(fill);
    let mut fut = moved(fut);
    let Poll::Ready(m) = Pin::new(&mut fut).poll(&mut cx) else {
        panic!("the request did not complete when slots freed");
    };
    exercise(m.unwrap(), 50);
}

#[test]
fn a_queued_map_future_copies_from_its_buffer_after_moving() {
    a_queued_future_moves_between_polls::<Vec<u8>>();
    a_queued_future_moves_between_polls::<Box<[u8]>>();
    a_queued_future_moves_between_polls::<&'static mut [u8]>();
    free_leaked();
}

struct Nop;

impl Wake for Nop {
    fn wake(self: Arc<Self>) {}
}

fn block_on<F: Future + Unpin>(mut f: F) -> F::Output {
    let waker = Waker::from(Arc::new(Nop));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = Pin::new(&mut f).poll(&mut cx) {
            return v;
        }
    }
}

/// A buffer that counts its drops: the count lives in its `Rest`, so a
/// buffer taken apart and never put back together is never counted.
#[derive(Debug)]
struct Counted {
    bytes: Vec<u8>,
    drops: DropCount,
}

#[derive(Debug)]
struct DropCount(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

// SAFETY: the region is the inner vector's, taken apart and put back by
// `Vec<u8>`'s own implementation; the counter rides along in the rest.
unsafe impl DmaBuffer for Counted {
    type Rest = (usize, DropCount);

    fn into_raw_parts(self) -> (std::ptr::NonNull<u8>, usize, Self::Rest) {
        let Counted { bytes, drops } = self;
        let (ptr, len, cap) = DmaBuffer::into_raw_parts(bytes);
        (ptr, len, (cap, drops))
    }

    unsafe fn from_raw_parts(ptr: std::ptr::NonNull<u8>, len: usize, rest: Self::Rest) -> Self {
        Counted {
            // SAFETY: the parts of one vector, as this function's caller
            // promises.
            bytes: unsafe { <Vec<u8> as DmaBuffer>::from_raw_parts(ptr, len, rest.0) },
            drops: rest.1,
        }
    }
}

/// Every buffer handed to the safe API is dropped exactly once, whichever
/// way it leaves: unmapped and dropped by its owner, a mapping dropped
/// without an unmap, a failed map's buffer, a queued future dropped before
/// it completed, a completed future's mapping dropped. A buffer the crate
/// took apart and forgot would leak (and a `Vec`'s memory with it); one
/// put together twice would be freed twice.
#[test]
fn every_buffer_is_dropped_exactly_once_whichever_way_it_leaves() {
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let drops = || count.load(std::sync::atomic::Ordering::SeqCst);
    let buf = |tag: u8| Counted {
        bytes: original(tag),
        drops: DropCount(count.clone()),
    };
    let mut config = GrowConfig::new(32 << 10, 32 << 10);
    config.grow_by = 32 << 10;
    // One segment of 16 slots: small enough for miri.
    config.pool.segment = 16;
    let tlb = IoTlb::growing(TlbKind::Default, Growth::new(HeapProvider::new(), config))
        .map(|t| t.with_clock(Arc::new(ManualClock::new())))
        .unwrap();
    let dev = forced();

    // Unmapped: the owner gets it back, whole, and drops it.
    let m = tlb.map(&dev, buf(1), Direction::ToDevice).unwrap();
    let back = m.unmap();
    assert_eq!(back.bytes, original(1));
    assert_eq!(drops(), 0);
    drop(back);
    assert_eq!(drops(), 1);

    // A mapping dropped without an unmap drops its buffer.
    let m = tlb.map(&dev, buf(2), Direction::FromDevice).unwrap();
    drop(m);
    assert_eq!(drops(), 2);

    // Fill the tlb: a map that cannot wait fails and gives the buffer back.
    let fill = tlb
        .map_with_attrs(&dev, vec![0u8; 32 << 10], Direction::ToDevice, Attrs::NONE)
        .unwrap();
    let failed = tlb
        .map(&dev, buf(3), Direction::ToDevice)
        .expect_err("the tlb is full and may not grow");
    assert_eq!(failed.buffer.bytes, original(3));
    drop(failed);
    assert_eq!(drops(), 3);

    // A queued future dropped before it completes drops its buffer.
    let waker = Waker::from(Arc::new(Nop));
    let mut cx = Context::from_waker(&waker);
    let mut fut = tlb.map_async(&dev, buf(4), Direction::FromDevice);
    assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
    drop(fut);
    assert_eq!(drops(), 4);

    // A queued future that completes: its mapping owns the buffer.
    let mut fut = tlb.map_async(&dev, buf(5), Direction::ToDevice);
    assert!(Pin::new(&mut fut).poll(&mut cx).is_pending());
    drop(fill);
    let Poll::Ready(m) = Pin::new(&mut fut).poll(&mut cx) else {
        panic!("the request did not complete when slots freed");
    };
    drop(fut);
    assert_eq!(drops(), 5 - 1, "the completed future dropped the buffer");
    drop(m.unwrap());
    assert_eq!(drops(), 5);
}
