//! The unmodified virtio-drivers block driver through a restricted tlb to
//! real vhost-user-blk devices in processes of their own, the builtin
//! device (`swiotlb blkdev`) and qemu-storage-daemon, checking what the
//! demo only reports:
//!
//! - **confinement**: the device's memory table is the tlb's pool and
//!   nothing else; every address the device was given lies in it (the
//!   builtin device answers IOERR to a descriptor outside its table, and
//!   counts it); and bytes of the driver's that were never shared (right
//!   after a shared buffer, in the same allocation, or a page never
//!   shared at all) are nowhere in the device process's memory, read
//!   whole through `/proc/PID/mem`, while bytes written through the pool
//!   are found there, so the scan is known to see;
//! - **growth with a device attached**: a tlb that adds pools during I/O
//!   gives each to the device before any address in it is used, I/O
//!   bounced through the new pools reads back byte for byte, and a pool
//!   given back when idle leaves the device's table (`REM_MEM_REG`).
//!
//! One test at a time (the daemons, the machine); every wait has a
//! deadline; each device is a guarded process, stopped when its test ends
//! however it ends.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use common::{fill_pattern, image, random_bytes, serial, start_builtin, start_qsd, stop_builtin};
use swiotlb::tlb::ManualClock;
use swiotlb::translate::Translate;
use swiotlb::{Device, DmaMask, GrowConfig, Growth, IoTlb, Platform, TlbKind};
use swiotlb::{DmaAddr, PhysAddr};
use swiotlb_host::{MemfdProvider, RegionInfo, Subscription};
use swiotlb_vhost::blk::{self, BlockOp};
use swiotlb_vhost::device::{DeviceProcess, QemuStorageDaemon};
use swiotlb_vhost::{DeviceHandle, VhostUserTransport};
use swiotlb_virtio::HalOptions;
use virtio_drivers::device::blk::VirtIOBlk;
use virtio_drivers::transport::DeviceType;
use virtio_drivers::Hal;

/// virtio-drivers' block driver uses 16 queue entries.
const QUEUE_SIZE: u16 = 16;
/// Deadline of every request: nothing completing for this long fails the
/// test (a hung device), it does not hang it.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
/// The images the devices export.
const IMAGE_LEN: u64 = 16 << 20;

swiotlb_virtio::hal!(struct ConfineBuiltinHal<swiotlb::Fast, Recorder>);
swiotlb_virtio::hal!(struct ConfineQsdHal<swiotlb::Fast, Recorder>);
swiotlb_virtio::hal!(struct GrowBuiltinHal<swiotlb::Fast, Recorder>);
swiotlb_virtio::hal!(struct GrowQsdHal<swiotlb::Fast, Recorder>);

// ---------------------------------------------------------------------
// The device under test.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Builtin,
    Qsd,
}

enum Proc {
    Builtin(DeviceProcess),
    Qsd(QemuStorageDaemon),
}

/// A device process over a fresh zeroed image in a temp dir.
struct Dev {
    proc: Proc,
    // Last, so the device stops before its directory goes.
    dir: tempfile::TempDir,
}

impl Dev {
    fn start(kind: Kind) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let img = dir.path().join("disk.img");
        image(&img, IMAGE_LEN);
        let proc = match kind {
            Kind::Builtin => Proc::Builtin(start_builtin(dir.path(), &img, &[])),
            Kind::Qsd => Proc::Qsd(start_qsd(dir.path(), &img)),
        };
        Self { proc, dir }
    }

    fn process(&self) -> &DeviceProcess {
        match &self.proc {
            Proc::Builtin(d) => d,
            Proc::Qsd(d) => d,
        }
    }

    fn pid(&self) -> u32 {
        let p = self.process();
        p.pid()
            .unwrap_or_else(|| panic!("{} is not running", p.name()))
    }

    /// Connects a transport whose first memory table is `table`.
    fn connect(&self, table: &[RegionInfo]) -> VhostUserTransport {
        let p = self.process();
        VhostUserTransport::connect(p.socket(), DeviceType::Block, QUEUE_SIZE, table, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}; {} said: {}", p.name(), p.log_tail()))
    }

    /// Stops the device; the builtin device's counters.
    fn finish(mut self) -> Option<swiotlb_blkdev::Stats> {
        match &mut self.proc {
            Proc::Builtin(d) => Some(stop_builtin(d, self.dir.path())),
            Proc::Qsd(_) => None,
        }
    }
}

// ---------------------------------------------------------------------
// The driver side: a restricted tlb on memfds, a Hal whose translation
// records every device address it hands out.

/// One device address handed out, and whether the device's memory table
/// held it at that moment.
#[derive(Clone, Copy, Debug)]
struct Seen {
    dma: u64,
    in_table: bool,
}

/// The identity translation, recording each device address it makes
/// (`phys_to_dma`: every bounce slot and coherent page the driver gives
/// the device) and whether the device's table held it then.
#[derive(Clone, Debug, Default)]
struct Recorder(Arc<Mutex<Recording>>);

#[derive(Debug, Default)]
struct Recording {
    handle: Option<DeviceHandle>,
    seen: Vec<Seen>,
}

impl Recorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, Recording> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// From now on, checks addresses against `handle`'s table.
    fn watch(&self, handle: &DeviceHandle) {
        self.lock().handle = Some(handle.clone());
    }

    fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }
}

impl Translate for Recorder {
    fn phys_to_dma(&self, phys: PhysAddr) -> DmaAddr {
        let mut r = self.lock();
        let in_table = r
            .handle
            .as_ref()
            .is_some_and(|h| h.regions().iter().any(|g| g.contains(phys.0, 1)));
        r.seen.push(Seen {
            dma: phys.0,
            in_table,
        });
        DmaAddr(phys.0)
    }

    fn dma_to_phys(&self, dma: DmaAddr) -> PhysAddr {
        PhysAddr(dma.0)
    }
}

/// A restricted tlb named `name` growing from memfds by `config`, on a
/// platform of its own (a `Hal` needs one for good), with a manual clock.
struct Rig {
    name: &'static str,
    platform: &'static Platform,
    provider: Arc<MemfdProvider>,
    clock: Arc<ManualClock>,
    recorder: Recorder,
}

impl Rig {
    fn new(name: &'static str, config: GrowConfig) -> Self {
        let provider = Arc::new(MemfdProvider::new(name));
        let clock = Arc::new(ManualClock::new());
        let tlb = IoTlb::growing(TlbKind::Restricted, Growth::new(provider.clone(), config))
            .expect("the restricted tlb")
            .with_name(name)
            .with_clock(clock.clone());
        let platform: &'static Platform = Box::leak(Box::new(Platform::new().with_restricted(tlb)));
        Self {
            name,
            platform,
            provider,
            clock,
            recorder: Recorder::default(),
        }
    }

    fn tlb(&self) -> &'static IoTlb {
        self.platform
            .restricted_tlb(self.name.into())
            .expect("the rig's tlb")
    }

    /// The device the `Hal` is bound to: bound to this tlb, translated by
    /// the recorder.
    fn device(&self) -> Device<Recorder> {
        Device::new(DmaMask::BITS_64)
            .with_restricted_tlb(self.name)
            .with_translate(self.recorder.clone())
    }

    /// Connects to `dev` with the provider's regions (the pool) as the
    /// table, subscribes the device to regions to come, and starts
    /// recording against its table.
    fn attach(&self, dev: &Dev) -> (VhostUserTransport, DeviceHandle, Subscription) {
        let table = self.provider.regions();
        let transport = dev.connect(&table);
        let handle = transport.handle();
        let subscription = self
            .provider
            .subscribe_knowing(Arc::new(handle.clone()), &table)
            .expect("the device takes the pool");
        self.recorder.watch(&handle);
        (transport, handle, subscription)
    }
}

/// The pool regions, as the device's table must hold them: the
/// provider's, each the memory of one of the tlb's pools.
fn pool_table(rig: &Rig) -> Vec<RegionInfo> {
    let mut regions = rig.provider.regions();
    regions.sort_by_key(|r| r.dma);
    let starts: Vec<u64> = rig.tlb().pool_starts().iter().map(|p| p.0).collect();
    assert_eq!(
        regions.iter().map(|r| r.dma).collect::<Vec<_>>(),
        starts,
        "each provider region is one pool of the tlb"
    );
    assert_eq!(
        regions.iter().map(|r| r.len).sum::<u64>(),
        rig.tlb().bytes_held() as u64,
        "the pools are the provider's regions, whole"
    );
    regions
}

fn sorted(mut v: Vec<RegionInfo>) -> Vec<RegionInfo> {
    v.sort_by_key(|r| r.dma);
    v
}

// ---------------------------------------------------------------------
// I/O.

/// The driver's buffer: `len` bytes shared with the device, then bytes of
/// the same allocation that never are (a secret).
struct Buf {
    bytes: Vec<u8>,
    len: usize,
}

impl Buf {
    fn new(data: &[u8], after: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(data.len() + after.len());
        bytes.extend_from_slice(data);
        bytes.extend_from_slice(after);
        Self {
            bytes,
            len: data.len(),
        }
    }

    fn after(&self) -> &[u8] {
        &self.bytes[self.len..]
    }
}

impl AsMut<[u8]> for Buf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[..self.len]
    }
}

// SAFETY: the parts are the vector's heap address, the shared prefix's
// length, and the vector's own length and capacity as the rest: the heap
// bytes stay valid and in place while the buffer is taken apart (nothing
// owns them but the parts), and the rest owns none of them.
unsafe impl swiotlb::DmaBuffer for Buf {
    type Rest = (usize, usize);

    fn into_raw_parts(self) -> (std::ptr::NonNull<u8>, usize, (usize, usize)) {
        let mut v = std::mem::ManuallyDrop::new(self.bytes);
        let ptr = std::ptr::NonNull::new(v.as_mut_ptr()).expect("a vector's pointer is not null");
        (ptr, self.len, (v.len(), v.capacity()))
    }

    unsafe fn from_raw_parts(ptr: std::ptr::NonNull<u8>, len: usize, rest: (usize, usize)) -> Self {
        // SAFETY: `ptr` and `rest` are a vector's pointer, length and
        // capacity taken apart by `into_raw_parts`, used once (the
        // caller's obligation).
        let bytes = unsafe { Vec::from_raw_parts(ptr.as_ptr(), rest.0, rest.1) };
        Self { bytes, len }
    }
}

/// Runs `ops` with `depth` in flight, every wait bounded; the completed
/// requests, in completion order.
fn run_io<H: Hal>(
    disk: &mut VirtIOBlk<H, VhostUserTransport>,
    handle: &DeviceHandle,
    dev: &Dev,
    ops: Vec<BlockOp<Buf>>,
    depth: usize,
) -> Vec<BlockOp<Buf>> {
    let mut done = Vec::with_capacity(ops.len());
    blk::run(disk, ops, depth, IO_TIMEOUT, handle, |op| done.push(op)).unwrap_or_else(|e| {
        panic!(
            "{e} (transport: {:?}); {} said: {}",
            handle.failure(),
            dev.process().name(),
            dev.process().log_tail()
        )
    });
    done
}

/// Requests covering `[0, total)`, their sizes cycling through `sizes`.
fn extents(total: usize, sizes: &[usize]) -> Vec<(u64, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    for &s in sizes.iter().cycle() {
        if at >= total {
            break;
        }
        let len = s.min(total - at);
        out.push(((at / 512) as u64, len));
        at += len;
    }
    out
}

fn pattern(seed: u64, sector: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_pattern(seed, sector * 512, &mut v);
    v
}

/// Writes the pattern over `extents`, then reads it back and checks every
/// byte, each buffer followed by `after` in its allocation (which must
/// come back untouched).
fn write_and_verify<H: Hal>(
    disk: &mut VirtIOBlk<H, VhostUserTransport>,
    handle: &DeviceHandle,
    dev: &Dev,
    seed: u64,
    extents: &[(u64, usize)],
    after: &[u8],
    depth: usize,
) {
    let writes = extents
        .iter()
        .map(|&(sector, len)| BlockOp {
            sector,
            buf: Buf::new(&pattern(seed, sector, len), after),
            write: true,
        })
        .collect();
    let done = run_io(disk, handle, dev, writes, depth);
    assert_eq!(done.len(), extents.len());
    let reads = extents
        .iter()
        .map(|&(sector, len)| BlockOp {
            sector,
            // A stale byte must not pass for a read one.
            buf: Buf::new(&vec![0x5a; len], after),
            write: false,
        })
        .collect();
    let done = run_io(disk, handle, dev, reads, depth);
    assert_eq!(done.len(), extents.len());
    for op in done {
        let want = pattern(seed, op.sector, op.buf.len);
        let got = &op.buf.bytes[..op.buf.len];
        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
            panic!(
                "read at sector {}: byte {i} is {:#04x}, wrote {:#04x}",
                op.sector, got[i], want[i]
            );
        }
        assert_eq!(
            op.buf.after(),
            after,
            "the bytes after the read at sector {} changed",
            op.sector
        );
    }
}

// ---------------------------------------------------------------------
// Reading another process's memory.

/// What a scan of a process's memory found.
#[derive(Debug)]
struct Scan {
    /// Per needle, the mappings it was found in.
    found: Vec<Vec<String>>,
    /// Bytes read.
    bytes: u64,
    /// Readable mappings read.
    mappings: usize,
}

/// Reads every readable mapping of process `pid` whole, through
/// `/proc/PID/maps` and `/proc/PID/mem`, and looks for each of `needles`
/// in it. Fails the test, with the reason, if the memory cannot be read
/// (ptrace access is needed: the same user, and under Yama's
/// `ptrace_scope` 1 an ancestor, which the test is).
fn scan(pid: u32, needles: &[&[u8]]) -> Scan {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/maps: {e}"));
    let mem = File::open(format!("/proc/{pid}/mem")).unwrap_or_else(|e| {
        panic!(
            "/proc/{pid}/mem: {e}: this test reads the device process's memory and needs ptrace access to it (same user; kernel.yama.ptrace_scope at most 1; no seccomp or LSM rule against it)"
        )
    });
    let overlap = needles.iter().map(|n| n.len()).max().unwrap_or(1) - 1;
    let finders: Vec<_> = needles.iter().map(memchr::memmem::Finder::new).collect();
    let mut found = vec![Vec::new(); needles.len()];
    let mut bytes = 0u64;
    let mut mappings = 0;
    let mut chunk = vec![0u8; MIB + overlap];
    // Bytes at the head of `chunk` carried over from the last read, and
    // the address they end at.
    let mut kept = 0;
    let mut carried_end = 0;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let name = fields.nth(3).unwrap_or("").to_owned();
        if !perms.starts_with('r') {
            continue;
        }
        let (start, end) = range.split_once('-').expect("a maps range");
        let start = u64::from_str_radix(start, 16).expect("a maps address");
        let end = u64::from_str_radix(end, 16).expect("a maps address");
        // The kernel's own pages: vvar reads fail with EIO, vsyscall
        // lies above what a file offset can name. Neither holds anything
        // of the process's.
        if name.starts_with("[vvar") || name == "[vsyscall]" {
            continue;
        }
        mappings += 1;
        let mut at = start;
        // A needle may straddle two mappings that touch: the last bytes
        // of the one before carry over, as between chunks.
        if start != carried_end {
            kept = 0;
        }
        while at < end {
            let want = (end - at).min(MIB as u64) as usize;
            let buf = &mut chunk[kept..kept + want];
            if let Err(e) = mem.read_exact_at(buf, at) {
                let why = if e.kind() == std::io::ErrorKind::PermissionDenied {
                    "no permission to read the device's memory"
                } else {
                    "a readable mapping that cannot be read"
                };
                panic!("/proc/{pid}/mem at {at:#x}, in the mapping {line}: {e}: {why}");
            }
            bytes += want as u64;
            let window = &chunk[..kept + want];
            for (i, f) in finders.iter().enumerate() {
                if f.find(window).is_some() && !found[i].contains(&name) {
                    found[i].push(name.clone());
                }
            }
            kept = overlap.min(window.len());
            let tail = window.len() - kept;
            chunk.copy_within(tail..tail + kept, 0);
            at += want as u64;
            carried_end = at;
        }
    }
    Scan {
        found,
        bytes,
        mappings,
    }
}

// ---------------------------------------------------------------------
// Confinement.

fn confinement<H: Hal>(kind: Kind, rig: &Rig) {
    let t0 = Instant::now();
    let dev = Dev::start(kind);
    // A fixed tlb, as the demo's: one memfd pool, the rings in it too.
    let (transport, handle, _listener) = rig.attach(&dev);

    // (a) The device's table is the pool, whole, and nothing else.
    let pools = pool_table(rig);
    assert_eq!(pools.len(), 1, "a fixed tlb has one pool");
    assert_eq!(sorted(handle.regions()), pools);

    let mut disk = VirtIOBlk::<H, _>::new(transport).expect("VirtIOBlk::new");

    // Secrets of the driver's: one right after every buffer, in the same
    // allocation; one filling a page that is never shared.
    let secret = random_bytes(64);
    let page_secret = random_bytes(64);
    let page: Vec<u8> = page_secret.iter().copied().cycle().take(4096).collect();
    let control = random_bytes(4096);

    let sizes = [512, 4 * KIB, 16 * KIB, 64 * KIB, 256 * KIB, 3 * 512];
    let ext = extents(4 * MIB, &sizes);
    write_and_verify(&mut disk, &handle, &dev, 11, &ext, &secret, 4);
    // The control: random bytes written through the pool, the secret
    // right after them; the last request, so its bounce slots still
    // hold it.
    let control_sector = (8 * MIB / 512) as u64;
    let done = run_io(
        &mut disk,
        &handle,
        &dev,
        vec![BlockOp {
            sector: control_sector,
            buf: Buf::new(&control, &secret),
            write: true,
        }],
        1,
    );
    assert_eq!(done.len(), 1);

    // (b) Every address the driver gave the device was in the pool, and
    // in the device's table when given.
    let seen = rig.recorder.seen();
    assert!(
        seen.len() > 2 * ext.len(),
        "{} addresses recorded",
        seen.len()
    );
    for s in &seen {
        assert!(
            pools.iter().any(|r| r.contains(s.dma, 1)),
            "the device was given {:#x}, outside the pool {pools:x?}",
            s.dma
        );
        assert!(s.in_table, "{:#x} given before the device had it", s.dma);
    }
    assert_eq!(sorted(handle.regions()), pools, "the table stayed the pool");

    // (c) The device process's memory, all of it: the control is there
    // (the scan sees what the device was given), no secret is.
    let pid = dev.pid();
    let s = scan(pid, &[&control[..64], &secret, &page_secret]);
    assert!(
        !s.found[0].is_empty(),
        "the control, written through the pool, was not found in {} bytes of {} mappings of {}: the scan does not work",
        s.bytes,
        s.mappings,
        dev.process().name()
    );
    assert!(
        s.found[1].is_empty(),
        "the bytes after a shared buffer reached {}: in {:?}",
        dev.process().name(),
        s.found[1]
    );
    assert!(
        s.found[2].is_empty(),
        "a page never shared reached {}: in {:?}",
        dev.process().name(),
        s.found[2]
    );
    eprintln!(
        "{:?}: scanned {} MiB in {} mappings; the control was in {:?}",
        kind,
        s.bytes >> 20,
        s.mappings,
        s.found[0]
    );
    // The page lived through the scan.
    assert_eq!(&page[..64], &page_secret[..]);

    drop(disk);
    assert!(handle.failure().is_none(), "{:?}", handle.failure());
    let writes = ext.len() as u64 + 1;
    if let Some(stats) = dev.finish() {
        // The device checked every descriptor against its table and
        // found none outside it; every request succeeded.
        assert_eq!(stats.io_errors, 0, "{stats:?}");
        assert_eq!(stats.unsupported, 0, "{stats:?}");
        assert_eq!(stats.writes, writes, "{stats:?}");
        assert_eq!(stats.reads, ext.len() as u64, "{stats:?}");
    }
    eprintln!("{kind:?} confinement: {:?}", t0.elapsed());
}

fn fixed_config() -> GrowConfig {
    GrowConfig::new(MIB, MIB)
}

#[test]
fn confinement_with_the_builtin_device() {
    let _one = serial();
    let rig = Rig::new("confine-builtin", fixed_config());
    ConfineBuiltinHal::bind(rig.platform, rig.device(), HalOptions::new()).unwrap();
    confinement::<ConfineBuiltinHal>(Kind::Builtin, &rig);
}

#[test]
fn confinement_with_qemu_storage_daemon() {
    let _one = serial();
    let rig = Rig::new("confine-qsd", fixed_config());
    ConfineQsdHal::bind(rig.platform, rig.device(), HalOptions::new()).unwrap();
    confinement::<ConfineQsdHal>(Kind::Qsd, &rig);
}

// ---------------------------------------------------------------------
// Growth with a device attached.

/// Starts at 512 KiB (room for one 256 KiB request beside the rings),
/// grows 1 MiB at a time up to 4 MiB.
fn growing_config() -> GrowConfig {
    let mut c = GrowConfig::new(512 * KIB, 4 * MIB);
    c.grow_by = MIB;
    c
}

fn growth<H: Hal>(kind: Kind, rig: &Rig) {
    let t0 = Instant::now();
    let dev = Dev::start(kind);
    let (transport, handle, _listener) = rig.attach(&dev);
    let first = handle.regions();
    assert_eq!(first.len(), 1);
    let mut disk = VirtIOBlk::<H, _>::new(transport).expect("VirtIOBlk::new");

    // 8 requests of 256 KiB in flight want 2 MiB of slots: the tlb grows
    // while the device runs.
    let ext = extents(8 * MIB, &[256 * KIB]);
    write_and_verify(&mut disk, &handle, &dev, 21, &ext, &[], 8);

    let stats = rig.tlb().stats();
    assert!(stats.pools_added >= 1, "the tlb did not grow: {stats:?}");
    assert_eq!(stats.pools_removed, 0, "{stats:?}");
    assert_eq!(stats.pool.total_failures(), 0, "{stats:?}");
    // The grown pools were used: the tlb's summed high-water mark is
    // beyond what the first pool holds.
    let first_slots = rig.tlb().first_pool().stats().io_tlb_nslabs;
    assert!(
        stats.pool.io_tlb_used_hiwater > first_slots,
        "no slot of a grown pool was used: {stats:?}"
    );
    // The device got every grown pool, and holds exactly the pools.
    let pools = pool_table(rig);
    assert_eq!(pools.len() as u64, 1 + stats.pools_added);
    assert_eq!(sorted(handle.regions()), pools);
    let c = handle.counters();
    assert_eq!(c.regions_added, stats.pools_added, "{c:?}");

    // Bounce slots in the grown pools carried verified I/O, and each was
    // in the device's table before the device was given it.
    let grown: Vec<RegionInfo> = pools
        .iter()
        .filter(|r| !first.contains(r))
        .cloned()
        .collect();
    let seen = rig.recorder.seen();
    let in_grown = seen
        .iter()
        .filter(|s| grown.iter().any(|r| r.contains(s.dma, 1)))
        .count();
    assert!(in_grown > 0, "no address of a grown pool was handed out");
    for s in &seen {
        assert!(
            pools.iter().any(|r| r.contains(s.dma, 1)),
            "{:#x} outside the pools",
            s.dma
        );
        assert!(
            s.in_table,
            "{:#x} was handed out before the device had its region",
            s.dma
        );
    }

    // The driver goes (its rings with it); idle pools are given back, one
    // per idle time, each removed from the device first.
    drop(disk);
    let idle = rig.tlb().grow_config().expect("a growing tlb").idle;
    let mut rounds = 0;
    while rig.tlb().stats().pools_removed < stats.pools_added {
        rounds += 1;
        assert!(
            rounds <= 4 * (stats.pools_added + 1),
            "grown pools not given back after {rounds} idle times: {:?}",
            rig.tlb().stats()
        );
        rig.tlb().maintain().expect("maintain");
        rig.clock.advance(idle + 1);
    }
    assert_eq!(rig.tlb().pool_count(), 1);
    assert_eq!(handle.regions(), first, "the device kept a pool that went");
    let c = handle.counters();
    assert_eq!(c.regions_removed, stats.pools_added, "{c:?}");
    assert!(handle.failure().is_none(), "{:?}", handle.failure());
    assert_eq!(rig.provider.regions(), first);

    if let Some(s) = dev.finish() {
        // No descriptor outside the table at any time: each grown pool
        // reached the device before its first use.
        assert_eq!(s.io_errors, 0, "{s:?}");
        assert_eq!((s.writes, s.reads), (ext.len() as u64, ext.len() as u64));
    }
    eprintln!(
        "{kind:?} growth: {} pools added and given back, {in_grown} addresses in them, {:?}",
        stats.pools_added,
        t0.elapsed()
    );
}

#[test]
fn growth_with_the_builtin_device_attached() {
    let _one = serial();
    let rig = Rig::new("grow-builtin", growing_config());
    GrowBuiltinHal::bind(rig.platform, rig.device(), HalOptions::new()).unwrap();
    growth::<GrowBuiltinHal>(Kind::Builtin, &rig);
}

#[test]
fn growth_with_qemu_storage_daemon_attached() {
    let _one = serial();
    let rig = Rig::new("grow-qsd", growing_config());
    GrowQsdHal::bind(rig.platform, rig.device(), HalOptions::new()).unwrap();
    growth::<GrowQsdHal>(Kind::Qsd, &rig);
}
