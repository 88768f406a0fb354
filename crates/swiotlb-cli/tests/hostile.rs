//! Hostile devices: the builtin device (`swiotlb blkdev`) told by its
//! hidden fault knobs to lie or die, the unmodified virtio-drivers block
//! driver bouncing through a restricted tlb, and what must happen each
//! time (`docs/RELIABILITY.md`, "Hostile devices"):
//!
//! - it writes past a buffer: the bytes land in the pool only;
//! - it rewrites a buffer after completing it: the driver keeps what was
//!   copied back, and a later mapping of the same slots never shows it;
//! - it reports a used length larger than the buffer: reported, nothing
//!   copied past the mapping;
//! - it never completes: a typed timeout, the device reset, then the
//!   requests in flight unmapped and returned;
//! - it dies mid-I/O: a typed error, and every acknowledged write is on
//!   the image when the device is started again;
//! - it names addresses outside the pool: its memory table holds only the
//!   pool, so it reaches nothing; the request fails with an I/O error and
//!   nothing outside the pool is read or written; and the honest device
//!   refuses a driver whose descriptor names memory outside the pool.
//!
//! Every wait has a deadline of a few seconds: a hang fails the test with
//! the reason, it does not stall it. One test at a time.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{image, serial, start_builtin, stop_builtin, DEVICE_TIMEOUT};
use swiotlb::{Device, DmaMask, GrowConfig, Growth, IoTlb, Platform, TlbKind};
use swiotlb_blkdev::FAULT_BYTE;
use swiotlb_host::{MemfdProvider, SharedMemory};
use swiotlb_vhost::blk::{self, BlkIoError, BlockOp, Reset, RunError};
use swiotlb_vhost::device::DeviceProcess;
use swiotlb_vhost::{DeviceHandle, Event, VhostUserTransport};
use swiotlb_virtio::HalOptions;
use virtio_drivers::device::blk::VirtIOBlk;
use virtio_drivers::transport::DeviceType;
use virtio_drivers::Hal;

/// virtio-drivers' block driver uses 16 queue entries.
const QUEUE_SIZE: u16 = 16;
const MIB: usize = 1 << 20;
const IMAGE_LEN: u64 = 4 << 20;
/// The deadline `blk::run` is given: short, so a silent device is given
/// up on quickly.
const PATIENCE: Duration = Duration::from_secs(2);
/// What a whole run may take before the test calls it a hang.
const HANG: Duration = Duration::from_secs(8);

swiotlb_virtio::hal!(struct OverrunHal);
swiotlb_virtio::hal!(struct RewriteHal);
swiotlb_virtio::hal!(struct UsedLenHal);
swiotlb_virtio::hal!(struct HangHal);
swiotlb_virtio::hal!(struct DieHal);
swiotlb_virtio::hal!(struct OutsideHal);
swiotlb_virtio::hal!(struct BypassInner);

/// A fixed restricted tlb of 1 MiB on a memfd, the device's whole memory.
struct Rig {
    name: &'static str,
    platform: &'static Platform,
    provider: Arc<MemfdProvider>,
}

impl Rig {
    fn new(name: &'static str) -> Self {
        let provider = Arc::new(MemfdProvider::new(name));
        let tlb = IoTlb::growing(
            TlbKind::Restricted,
            Growth::new(provider.clone(), GrowConfig::new(MIB, MIB)),
        )
        .expect("the restricted tlb")
        .with_name(name);
        let platform: &'static Platform = Box::leak(Box::new(Platform::new().with_restricted(tlb)));
        Self {
            name,
            platform,
            provider,
        }
    }

    fn device(&self) -> Device {
        Device::new(DmaMask::BITS_64).with_restricted_tlb(self.name)
    }

    /// Slots in use in the tlb.
    fn used_slots(&self) -> u64 {
        self.platform
            .restricted_tlb(self.name.into())
            .expect("the rig's tlb")
            .stats()
            .pool
            .io_tlb_used
    }

    /// The pool's bytes as they are now.
    fn pool_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for r in self.provider.regions() {
            let ptr = std::ptr::with_exposed_provenance::<u8>(r.cpu as usize);
            // SAFETY: the region is the provider's memfd mapping at `cpu`,
            // `len` bytes, mapped while the provider lives (held by
            // `self`); the device is idle when a test reads it, and bytes
            // are read as plain `u8`, valid whatever they hold.
            let bytes = unsafe { std::slice::from_raw_parts(ptr, r.len as usize) };
            out.extend_from_slice(bytes);
        }
        out
    }

    /// Connects to `dev` with the pool as its whole memory table.
    fn connect(&self, dev: &DeviceProcess) -> (VhostUserTransport, DeviceHandle) {
        let t = VhostUserTransport::connect(
            dev.socket(),
            DeviceType::Block,
            QUEUE_SIZE,
            &self.provider.regions(),
            DEVICE_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e}; {} said: {}", dev.name(), dev.log_tail()));
        let h = t.handle();
        (t, h)
    }
}

/// A device and its image in a temp dir.
struct Dev {
    proc: DeviceProcess,
    img: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl Dev {
    fn start(faults: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let img = dir.path().join("disk.img");
        image(&img, IMAGE_LEN);
        let proc = start_builtin(dir.path(), &img, faults);
        Self { proc, img, dir }
    }
}

/// The driver's buffer: `len` bytes shared with the device, then a canary
/// in the same allocation that never is.
#[derive(Debug)]
struct Buf {
    bytes: Vec<u8>,
    len: usize,
}

const CANARY: u8 = 0x3c;

impl Buf {
    fn new(data: &[u8], canary: usize) -> Self {
        let mut bytes = data.to_vec();
        bytes.resize(data.len() + canary, CANARY);
        Self {
            bytes,
            len: data.len(),
        }
    }

    fn data(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn canary_intact(&self) -> bool {
        self.bytes[self.len..].iter().all(|&b| b == CANARY)
    }
}

// SAFETY: the parts are the vector's heap address, the shared prefix's
// length, and the vector's length and capacity as the rest: the heap bytes
// stay valid and in place while the buffer is taken apart.
unsafe impl swiotlb::DmaBuffer for Buf {
    type Rest = (usize, usize);

    fn into_raw_parts(self) -> (std::ptr::NonNull<u8>, usize, (usize, usize)) {
        let mut v = std::mem::ManuallyDrop::new(self.bytes);
        let ptr = std::ptr::NonNull::new(v.as_mut_ptr()).expect("a vector's pointer is not null");
        (ptr, self.len, (v.len(), v.capacity()))
    }

    unsafe fn from_raw_parts(ptr: std::ptr::NonNull<u8>, len: usize, rest: (usize, usize)) -> Self {
        // SAFETY: a vector's pointer, length and capacity taken apart by
        // `into_raw_parts`, used once (the caller's obligation).
        let bytes = unsafe { Vec::from_raw_parts(ptr.as_ptr(), rest.0, rest.1) };
        Self { bytes, len }
    }
}

/// Bytes differing per sector and per offset, seeded.
fn pattern(seed: u8, sector: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (((sector as usize * 131) ^ (i * 7) ^ usize::from(seed)) as u8) | 1)
        .collect()
}

fn write_op(seed: u8, sector: u64, len: usize) -> BlockOp<Buf> {
    BlockOp {
        sector,
        buf: Buf::new(&pattern(seed, sector, len), 0),
        write: true,
    }
}

fn read_op(sector: u64, len: usize, canary: usize) -> BlockOp<Buf> {
    BlockOp {
        sector,
        buf: Buf::new(&vec![0; len], canary),
        write: false,
    }
}

/// Runs `ops`, bounded: a run longer than [`HANG`] fails the test.
fn run<H: Hal>(
    disk: &mut VirtIOBlk<H, VhostUserTransport>,
    handle: &DeviceHandle,
    ops: Vec<BlockOp<Buf>>,
    depth: usize,
) -> (Vec<BlockOp<Buf>>, Result<(), RunError<Buf>>) {
    let mut done = Vec::new();
    let t = Instant::now();
    let r = blk::run(disk, ops, depth, PATIENCE, handle, |op| done.push(op));
    assert!(
        t.elapsed() < HANG,
        "blk::run took {:?} (deadline {PATIENCE:?}): a hang",
        t.elapsed()
    );
    (done, r)
}

fn run_ok<H: Hal>(
    disk: &mut VirtIOBlk<H, VhostUserTransport>,
    handle: &DeviceHandle,
    dev: &DeviceProcess,
    ops: Vec<BlockOp<Buf>>,
) -> Vec<BlockOp<Buf>> {
    let (done, r) = run(disk, handle, ops, 4);
    if let Err(e) = r {
        panic!("{e}; {} said: {}", dev.name(), dev.log_tail());
    }
    done
}

#[test]
fn overrun_lands_in_the_pool_only() {
    let _one = serial();
    let rig = Rig::new("hostile-overrun");
    OverrunHal::bind(rig.platform, rig.device(), HalOptions::new()).unwrap();
    let dev = Dev::start(&["--fault-overrun", "512"]);
    let (t, h) = rig.connect(&dev.proc);
    let mut disk = VirtIOBlk::<OverrunHal, _>::new(t).unwrap();
    run_ok(&mut disk, &h, &dev.proc, vec![write_op(1, 16, 4096)]);
    let done = run_ok(&mut disk, &h, &dev.proc, vec![read_op(16, 4096, 512)]);
    let buf = &done[0].buf;
    assert_eq!(buf.data(), pattern(1, 16, 4096), "the read's data");
    assert!(
        buf.canary_intact(),
        "the 512 bytes after the driver's buffer changed: the overrun reached it"
    );
    // The overrun is in the pool, right after the read's slots.
    let pool = rig.pool_bytes();
    let at = memchr::memmem::find(&pool, &pattern(1, 16, 4096))
        .expect("the read's data is still in its slots");
    let past = &pool[at + 4096..at + 4096 + 512];
    let lied = past.iter().filter(|&&b| b == FAULT_BYTE).count();
    assert!(
        lied >= 500,
        "only {lied} of the 512 bytes past the mapping in the pool hold the device's overrun byte"
    );
}

#[test]
fn rewrite_after_completion_never_reaches_the_driver() {
    let _one = serial();
    let rig = Rig::new("hostile-rewrite");
    RewriteHal::bind(rig.platform, rig.device(), HalOptions::new()).unwrap();
    let dev = Dev::start(&["--fault-rewrite", "--fault-rewrite-delay-ms", "300"]);
    let (t, h) = rig.connect(&dev.proc);
    let mut disk = VirtIOBlk::<RewriteHal, _>::new(t).unwrap();
    run_ok(
        &mut disk,
        &h,
        &dev.proc,
        vec![write_op(2, 0, 4096), write_op(3, 64, 4096)],
    );
    let first = run_ok(&mut disk, &h, &dev.proc, vec![read_op(0, 4096, 64)]);
    assert_eq!(
        first[0].buf.data(),
        pattern(2, 0, 4096),
        "read at completion"
    );
    // The device rewrites the slots 300 ms after the completion.
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        first[0].buf.data(),
        pattern(2, 0, 4096),
        "the driver's buffer changed after completion"
    );
    assert!(first[0].buf.canary_intact());
    let pool = rig.pool_bytes();
    assert!(
        memchr::memmem::find(&pool, &[FAULT_BYTE; 4096]).is_some(),
        "the device's rewrite is not in the pool: the fault did not happen"
    );
    // A later mapping of the same slots (the tlb hands out the freed ones)
    // carries what the driver and then the device put there, never the
    // rewrite.
    let second = run_ok(&mut disk, &h, &dev.proc, vec![read_op(64, 4096, 64)]);
    assert_eq!(
        second[0].buf.data(),
        pattern(3, 64, 4096),
        "a later read shows the earlier rewrite"
    );
}

#[test]
fn used_len_larger_than_the_buffer_is_reported_and_nothing_copied_past() {
    let _one = serial();
    let rig = Rig::new("hostile-used-len");
    UsedLenHal::bind(rig.platform, rig.device(), HalOptions::new()).unwrap();
    let dev = Dev::start(&["--fault-used-len-delta", "4096"]);
    let (t, h) = rig.connect(&dev.proc);
    let mut disk = VirtIOBlk::<UsedLenHal, _>::new(t).unwrap();
    run_ok(&mut disk, &h, &dev.proc, vec![write_op(4, 8, 4096)]);
    let done = run_ok(&mut disk, &h, &dev.proc, vec![read_op(8, 4096, 4096)]);
    assert_eq!(done[0].buf.data(), pattern(4, 8, 4096));
    assert!(
        done[0].buf.canary_intact(),
        "bytes past the driver's buffer changed: a copy went past the mapping"
    );
    assert_eq!(h.counters().used_len_too_large, 2, "both requests lied");
    let reports = h.used_len_reports();
    // The write: only its status byte is writable; the read: data and
    // status.
    assert_eq!(
        reports
            .iter()
            .map(|r| (r.writable, r.used_len))
            .collect::<Vec<_>>(),
        [(1, 1 + 4096), (4097, 4097 + 4096)],
        "{reports:?}"
    );
}

/// Every retired request came after the reset, and the reset after the
/// rings stopped.
fn assert_reset_before_return(h: &DeviceHandle, returned: usize) {
    let events = h.events();
    let reset = events
        .iter()
        .position(|e| matches!(e, Event::Reset { .. }))
        .unwrap_or_else(|| panic!("no reset in {events:?}"));
    let retired: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, Event::Retired { .. }))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(retired.len(), returned, "{events:?}");
    assert!(
        retired.iter().all(|&i| i > reset),
        "a request was handed back before the reset: {events:?}"
    );
    assert_eq!(h.counters().resets, 1);
    assert_eq!(h.counters().retired, returned as u64);
}

#[test]
fn never_completes_times_out_resets_then_returns_the_buffers() {
    let _one = serial();
    let rig = Rig::new("hostile-hang");
    HangHal::bind(rig.platform, rig.device(), HalOptions::new()).unwrap();
    let dev = Dev::start(&["--fault-hang-after", "2"]);
    let (t, h) = rig.connect(&dev.proc);
    let mut disk = VirtIOBlk::<HangHal, _>::new(t).unwrap();
    // The rings alone.
    let idle = rig.used_slots();
    let ops = (0..6).map(|i| write_op(5, i * 8, 4096)).collect();
    let (done, r) = run(&mut disk, &h, ops, 4);
    let e = r.expect_err("a device that never answers");
    assert!(matches!(e.error, BlkIoError::Timeout { .. }), "{e}");
    assert_eq!(done.len(), 2, "the two answered requests");
    assert_eq!(e.in_flight, 4, "{e}");
    assert_eq!(e.reset, Some(Reset::RingsStopped), "{e}");
    assert_eq!(e.returned.len(), 4, "{e}");
    assert!(
        e.to_string()
            .contains("4 requests in flight were unmapped and returned"),
        "{e}"
    );
    assert_reset_before_return(&h, 4);
    assert_eq!(
        rig.used_slots(),
        idle,
        "slots still mapped after the buffers came back"
    );
    // The buffers came back whole, as given.
    for op in &e.returned {
        assert_eq!(op.buf.data(), pattern(5, op.sector, 4096));
    }
    assert!(h.failure().is_some(), "the reset is latched");
}

#[test]
fn dies_mid_io_then_every_acknowledged_write_is_on_disk() {
    let _one = serial();
    let rig = Rig::new("hostile-die");
    DieHal::bind(rig.platform, rig.device(), HalOptions::new()).unwrap();
    let mut dev = Dev::start(&["--fault-die-after", "3"]);
    let (t, h) = rig.connect(&dev.proc);
    let mut disk = VirtIOBlk::<DieHal, _>::new(t).unwrap();
    let idle = rig.used_slots();
    let ops = (0..8).map(|i| write_op(6, i * 8, 4096)).collect();
    let (done, r) = run(&mut disk, &h, ops, 4);
    let e = r.expect_err("a device that dies");
    assert!(
        matches!(
            e.error,
            BlkIoError::DeviceGone { .. } | BlkIoError::Timeout { .. }
        ),
        "{e}"
    );
    assert!(e.reset.is_some(), "{e}");
    assert_eq!(e.returned.len(), e.in_flight, "{e}");
    assert_reset_before_return(&h, e.in_flight);
    assert_eq!(rig.used_slots(), idle, "slots still mapped");
    let acked: Vec<u64> = done.iter().map(|op| op.sector).collect();
    assert_eq!(acked.len(), 3, "answered before it died: {acked:?}");
    drop(disk);
    let _ = dev.proc.stop(Duration::from_secs(2));

    // The same image, a new device process, a new driver.
    dev.proc = start_builtin(dev.dir.path(), &dev.img, &[]);
    let (t, h) = rig.connect(&dev.proc);
    let mut disk = VirtIOBlk::<DieHal, _>::new(t).unwrap();
    let reads = acked.iter().map(|&s| read_op(s, 4096, 0)).collect();
    let back = run_ok(&mut disk, &h, &dev.proc, reads);
    for op in back {
        assert_eq!(
            op.buf.data(),
            pattern(6, op.sector, 4096),
            "the acknowledged write at sector {} is not on disk",
            op.sector
        );
    }
}

/// One request alone, which the device must refuse with VIRTIO_BLK_S_IOERR:
/// the typed status error, nothing else in flight, no reset, the buffer
/// handed back.
fn run_refused<H: Hal>(
    disk: &mut VirtIOBlk<H, VhostUserTransport>,
    handle: &DeviceHandle,
    op: BlockOp<Buf>,
) -> Buf {
    let sector = op.sector;
    let (done, r) = run(disk, handle, vec![op], 1);
    assert!(done.is_empty(), "the request completed: {done:?}");
    let mut e = r.expect_err("a request whose data lies outside the pool");
    assert_eq!(
        e.error,
        BlkIoError::Status { sector, status: 1 },
        "not an I/O error status: {e}"
    );
    assert!(e.to_string().contains("I/O error"), "{e}");
    assert_eq!((e.in_flight, e.reset), (0, None), "{e}");
    assert_eq!(e.returned.len(), 1, "{e}");
    e.returned.pop().expect("one").buf
}

#[test]
fn addresses_outside_the_pool_reach_nothing_and_fail_with_an_io_error() {
    let _one = serial();
    let rig = Rig::new("hostile-outside");
    OutsideHal::bind(rig.platform, rig.device(), HalOptions::new()).unwrap();
    let pool = rig.provider.regions();
    assert_eq!(pool.len(), 1, "one region: {pool:?}");
    let pool_end = pool[0].dma + pool[0].len;

    // A canary the device is never given: a memfd mapped right next to
    // the pool (identity: a device address is an address in this
    // process), before it where the kernel left room (it maps from the
    // top down, so the page after the pool is usually taken), else after
    // it, else anywhere.
    const CANARY_LEN: usize = 64 << 10;
    let before = usize::try_from(pool[0].dma).expect("an address here") - CANARY_LEN;
    let after = usize::try_from(pool_end).expect("an address here");
    let canary = SharedMemory::new_at("hostile-outside-canary", CANARY_LEN, before)
        .or_else(|_| SharedMemory::new_at("hostile-outside-canary", CANARY_LEN, after))
        .or_else(|_| SharedMemory::new("hostile-outside-canary", CANARY_LEN))
        .expect("the canary's memfd");
    let canary_addr = canary.as_ptr().as_ptr() as u64;
    let adjacent = canary_addr == before as u64 || canary_addr == pool_end;
    eprintln!(
        "pool {:#x}..{pool_end:#x}; canary {canary_addr:#x}..{:#x} (adjacent: {adjacent})",
        pool[0].dma,
        canary_addr + canary.len() as u64,
    );
    // SAFETY: the canary is this test's own mapping of `len` bytes, alive
    // until the end of the test; the device never has it (it is in no
    // memory table), so only this slice touches it.
    let canary_bytes =
        unsafe { std::slice::from_raw_parts_mut(canary.as_ptr().as_ptr(), canary.len()) };
    let canary_pattern = pattern(0x41, 0, canary.len());
    canary_bytes.copy_from_slice(&canary_pattern);

    // The driver's own buffers, on its heap, never shared: a read into a
    // buffer holding 0x77s, a write of a pattern.
    let read_own = BlockOp {
        sector: 32,
        buf: Buf::new(&[0x77; 4096], 512),
        write: false,
    };
    let write_own = write_op(0x42, 40, 4096);
    let read_own_addr = read_own.buf.bytes.as_ptr() as u64;
    let write_own_addr = write_own.buf.bytes.as_ptr() as u64;
    for a in [canary_addr, read_own_addr, write_own_addr] {
        assert!(
            !pool[0].contains(a, 4096),
            "{a:#x} is in the pool: not outside"
        );
    }

    // One address per request, in the order below: just past the pool,
    // the canary, each request's own heap buffer, the canary again.
    let addrs =
        format!("end,{canary_addr:#x},{read_own_addr:#x},{write_own_addr:#x},{canary_addr:#x}");
    let mut dev = Dev::start(&["--fault-outside-addr", &addrs]);
    let (t, h) = rig.connect(&dev.proc);
    assert_eq!(
        h.regions(),
        pool,
        "the device's memory table is the pool alone"
    );
    let mut disk = VirtIOBlk::<OutsideHal, _>::new(t).unwrap();
    let idle = rig.used_slots();

    // A read of sector 16 steered just past the pool's end.
    let first = BlockOp {
        sector: 16,
        buf: Buf::new(&[0x66; 4096], 512),
        write: false,
    };
    let back = run_refused(&mut disk, &h, first);
    assert_eq!(back.data(), [0x66; 4096], "the driver's buffer changed");
    assert!(back.canary_intact());
    assert_eq!(rig.used_slots(), idle, "slots still mapped");
    // A write of sector 24 whose data the device looks for in the canary.
    let back = run_refused(&mut disk, &h, write_op(0x43, 24, 4096));
    assert_eq!(back.data(), pattern(0x43, 24, 4096));
    assert_eq!(rig.used_slots(), idle, "slots still mapped");
    // A read whose data the device puts in the driver's own buffer (were
    // it reached, it would hold the disk's zeros), and a write whose data
    // it takes from there.
    let back = run_refused(&mut disk, &h, read_own);
    assert_eq!(back.data(), [0x77; 4096], "the driver's own buffer changed");
    assert!(back.canary_intact());
    assert_eq!(back.bytes.as_ptr() as u64, read_own_addr);
    let back = run_refused(&mut disk, &h, write_own);
    assert_eq!(back.data(), pattern(0x42, 40, 4096));
    assert_eq!(rig.used_slots(), idle, "slots still mapped");
    // A read of 64 KiB (sixteen pages) into the canary, all of it.
    let big = BlockOp {
        sector: 64,
        buf: Buf::new(&[0x55; 64 << 10], 0),
        write: false,
    };
    let back = run_refused(&mut disk, &h, big);
    assert_eq!(back.data(), vec![0x55; 64 << 10]);
    assert_eq!(rig.used_slots(), idle, "slots still mapped");

    assert_eq!(
        canary_bytes[..],
        canary_pattern[..],
        "the canary outside the pool changed (adjacent to the pool: {adjacent})"
    );

    // The addresses are used up: the device is honest again, and the same
    // driver and tlb work. The refused writes left their sectors as they
    // were (zeros): nothing was read from outside the pool into them.
    run_ok(
        &mut disk,
        &h,
        &dev.proc,
        vec![write_op(0x44, 48, 4096), write_op(0x45, 56, 8192)],
    );
    let reads = [24, 40, 48, 56]
        .into_iter()
        .map(|s| read_op(s, 4096, 64))
        .collect();
    let done = run_ok(&mut disk, &h, &dev.proc, reads);
    let by_sector = |s: u64| {
        done.iter()
            .find(|op| op.sector == s)
            .unwrap_or_else(|| panic!("no read of sector {s}"))
    };
    assert_eq!(
        by_sector(24).buf.data(),
        [0; 4096],
        "a refused write landed"
    );
    assert_eq!(
        by_sector(40).buf.data(),
        [0; 4096],
        "a refused write landed"
    );
    assert_eq!(by_sector(48).buf.data(), pattern(0x44, 48, 4096));
    assert_eq!(by_sector(56).buf.data(), &pattern(0x45, 56, 8192)[..4096]);
    assert!(done.iter().all(|op| op.buf.canary_intact()));
    assert_eq!(rig.used_slots(), idle, "slots still mapped");
    assert_eq!(canary_bytes[..], canary_pattern[..]);

    drop(disk);
    let log = dev.proc.log_tail();
    let stats = stop_builtin(&mut dev.proc, dev.dir.path());
    // Five refusals, each a lie told and an I/O error; the honest requests
    // moved only their own bytes.
    assert_eq!(
        (stats.outside, stats.io_errors, stats.faults),
        (5, 5, 5),
        "{stats:?}"
    );
    assert_eq!(stats.bytes_written, 4096 + 8192, "{stats:?}");
    assert_eq!(stats.bytes_read, 4 * 4096, "{stats:?}");
    assert_eq!(
        log.matches("lies outside guest memory: refused").count(),
        5,
        "{log}"
    );
    // Nothing of the canary's, nor of the refused writes', on the image.
    let img = std::fs::read(&dev.img).expect("the image");
    for (what, bytes) in [
        ("the canary", &canary_pattern[..4096]),
        ("the write at sector 24", &pattern(0x43, 24, 4096)[..]),
        ("the write at sector 40", &pattern(0x42, 40, 4096)[..]),
    ] {
        assert!(
            memchr::memmem::find(&img, bytes).is_none(),
            "{what} is on the image"
        );
    }
}

/// The driver's buffer whose next `share` skips the bounce (by address).
static BYPASS_NEXT: std::sync::Mutex<Option<u64>> = std::sync::Mutex::new(None);
/// Buffers shared without a bounce and not yet unshared.
static BYPASSED: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());

/// A Hal that shares one chosen buffer as it is, at its own address
/// (identity: an address in this process names it to the device), outside
/// the pool; every other call goes to the bounce Hal [`BypassInner`].
struct BypassHal;

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// SAFETY: every method but the bypass delegates to `BypassInner`, which
// keeps the trait's rules. The bypassed buffer is handed to the device at
// its own address and never written by this Hal: virtio-drivers keeps it
// valid until `unshare`, which then has nothing to copy back.
unsafe impl Hal for BypassHal {
    fn dma_alloc(
        pages: usize,
        direction: virtio_drivers::BufferDirection,
    ) -> (u64, std::ptr::NonNull<u8>) {
        BypassInner::dma_alloc(pages, direction)
    }

    unsafe fn dma_dealloc(paddr: u64, vaddr: std::ptr::NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: the caller's contract, passed on unchanged.
        unsafe { BypassInner::dma_dealloc(paddr, vaddr, pages) }
    }

    unsafe fn mmio_phys_to_virt(paddr: u64, size: usize) -> std::ptr::NonNull<u8> {
        // SAFETY: the caller's contract, passed on unchanged.
        unsafe { BypassInner::mmio_phys_to_virt(paddr, size) }
    }

    unsafe fn share(
        buffer: std::ptr::NonNull<[u8]>,
        direction: virtio_drivers::BufferDirection,
    ) -> u64 {
        let addr = buffer.cast::<u8>().as_ptr() as u64;
        let mut next = lock(&BYPASS_NEXT);
        if *next == Some(addr) {
            *next = None;
            lock(&BYPASSED).push(addr);
            return addr;
        }
        drop(next);
        // SAFETY: the caller's contract, passed on unchanged.
        unsafe { BypassInner::share(buffer, direction) }
    }

    unsafe fn unshare(
        paddr: u64,
        buffer: std::ptr::NonNull<[u8]>,
        direction: virtio_drivers::BufferDirection,
    ) {
        let mut bypassed = lock(&BYPASSED);
        if let Some(at) = bypassed.iter().position(|&a| a == paddr) {
            bypassed.swap_remove(at);
            return;
        }
        drop(bypassed);
        // SAFETY: `paddr` came from the inner `share` of this buffer (the
        // bypassed ones were taken out above): the caller's contract.
        unsafe { BypassInner::unshare(paddr, buffer, direction) }
    }
}

#[test]
fn a_descriptor_naming_memory_outside_the_pool_is_refused_by_the_honest_device() {
    let _one = serial();
    let rig = Rig::new("hostile-bypass");
    BypassInner::bind(rig.platform, rig.device(), HalOptions::new()).unwrap();
    let mut dev = Dev::start(&[]);
    let (t, h) = rig.connect(&dev.proc);
    let mut disk = VirtIOBlk::<BypassHal, _>::new(t).unwrap();
    let idle = rig.used_slots();
    run_ok(&mut disk, &h, &dev.proc, vec![write_op(9, 8, 4096)]);

    // A read of sector 8 into the driver's own heap buffer, unbounced.
    let read = BlockOp {
        sector: 8,
        buf: Buf::new(&[0x77; 4096], 512),
        write: false,
    };
    let addr = read.buf.bytes.as_ptr() as u64;
    assert!(
        !rig.provider.holds(addr, 4096),
        "the heap buffer is in the pool"
    );
    *lock(&BYPASS_NEXT) = Some(addr);
    let back = run_refused(&mut disk, &h, read);
    assert!(lock(&BYPASS_NEXT).is_none(), "the bypass was not taken");
    assert_eq!(
        back.data(),
        [0x77; 4096],
        "the device wrote the driver's buffer"
    );
    assert!(back.canary_intact());
    assert_eq!(rig.used_slots(), idle, "slots still mapped");

    // A write of sector 24 from the driver's heap buffer, unbounced.
    let write = write_op(10, 24, 4096);
    *lock(&BYPASS_NEXT) = Some(write.buf.bytes.as_ptr() as u64);
    let back = run_refused(&mut disk, &h, write);
    assert_eq!(back.data(), pattern(10, 24, 4096));
    assert_eq!(rig.used_slots(), idle, "slots still mapped");
    assert!(
        lock(&BYPASSED).is_empty(),
        "a bypassed buffer was never unshared"
    );

    // Bounced again, the same driver works; the refused write never landed.
    let done = run_ok(
        &mut disk,
        &h,
        &dev.proc,
        vec![read_op(8, 4096, 64), read_op(24, 4096, 64)],
    );
    for op in &done {
        let want = if op.sector == 8 {
            pattern(9, 8, 4096)
        } else {
            vec![0; 4096]
        };
        assert_eq!(op.buf.data(), want, "sector {}", op.sector);
    }
    drop(disk);
    let log = dev.proc.log_tail();
    let stats = stop_builtin(&mut dev.proc, dev.dir.path());
    assert_eq!((stats.outside, stats.io_errors), (2, 2), "{stats:?}");
    assert_eq!(stats.faults, 0, "an honest device: {stats:?}");
    assert_eq!(stats.bytes_written, 4096, "{stats:?}");
    assert_eq!(
        log.matches("lies outside guest memory: refused").count(),
        2,
        "{log}"
    );
}
