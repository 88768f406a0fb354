//! `swiotlb demo`: the unmodified virtio-drivers block driver does real
//! I/O through a bounce pool to a real vhost-user-blk device that can see
//! nothing but the pool.
//!
//! The device has a restricted tlb, as virtio with
//! `VIRTIO_F_ACCESS_PLATFORM` has in a confidential VM: its rings and every
//! byte of every request live in the tlb's pool, a memfd that is the only
//! memory the device process is given. The driver's own buffers are
//! ordinary heap memory the device never sees. The demo writes patterned
//! data with a mix of request sizes, reads it back cut differently, checks
//! every byte, and reports the throughput, the tlb's counters and the
//! region table the device received. `--compare` measures the cost of the
//! confinement: the same I/O bounced and unbounced, per request size.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use swiotlb::{Device, DmaMask, GrowConfig, Growth, IoTlb, Platform, TlbKind};
use swiotlb_host::{MemfdProvider, RegionInfo};
use swiotlb_vhost::blk::{self, BlockOp};
use swiotlb_vhost::{DeviceHandle, VhostUserTransport};
use swiotlb_virtio::HalOptions;
use virtio_drivers::device::blk::VirtIOBlk;
use virtio_drivers::transport::DeviceType;

use crate::error::Error;
use crate::units::{human, parse_size};

mod compare;
mod device;
mod progress;
mod workload;

use device::{DeviceChoice, RunningDevice};
use workload::{fill, first_mismatch, mix, plan, plan_rng, Req, SECTOR};

/// The name of the demo's restricted tlb, as a device tree would name its
/// `restricted-dma-pool` node.
const TLB_NAME: &str = "virtio-blk-restricted";

/// The driver's queue: `VirtIOBlk` uses 16 entries.
const QUEUE_SIZE: u16 = 16;

swiotlb_virtio::hal!(struct BouncedHal);

/// Real block I/O through the bounce pool to a vhost-user-blk device.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The device: `qemu` (qemu-storage-daemon, from qemu-utils), `builtin`
    /// (this command's own vhost-user-blk device, a process of its own), or
    /// the socket PATH of a vhost-user-blk backend already running (its
    /// first --size bytes are overwritten)
    #[arg(long, default_value = "qemu", value_name = "qemu|builtin|PATH")]
    device: String,
    /// Bytes to write, then read back and check (K, M, G suffixes)
    #[arg(long, default_value = "64M")]
    size: String,
    /// The restricted tlb's pool size; the largest request is the largest
    /// mapping the pool takes (256 KiB with Linux's geometry)
    #[arg(long, default_value = "4M")]
    pool: String,
    /// Requests in flight at once
    #[arg(long, default_value_t = 4)]
    depth: usize,
    /// Seed of the request sizes and of the data pattern
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds the device may stay silent before the demo gives up
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
    /// Also run the same I/O unbounced (driver buffers in a second memfd
    /// the device is given too) and print both per request size
    #[arg(long)]
    compare: bool,
}

/// What the demo reports.
#[derive(Serialize, Debug)]
pub(crate) struct Report {
    /// Which backend: `qemu-storage-daemon`, `builtin`, or the socket.
    device: String,
    /// Bytes read back and checked, byte for byte.
    bytes_verified: u64,
    /// Requests written, then read.
    requests: u64,
    /// Request sizes of the mix, in bytes.
    request_sizes: Vec<usize>,
    /// Writes and reads together, in MB/s (10^6 bytes).
    mb_per_s: f64,
    write_mb_per_s: f64,
    read_mb_per_s: f64,
    /// The memory table the device was given.
    regions: Vec<RegionRow>,
    /// How many regions it holds, and their bytes.
    regions_shared: usize,
    shared_bytes: u64,
    /// The restricted tlb's pool, in slots, and its high-water mark.
    io_tlb_nslabs: u64,
    io_tlb_used_hiwater: u64,
    /// Bytes the tlb copied to the device's slots and back.
    bytes_to_device: u64,
    bytes_from_device: u64,
    /// Mappings the tlb refused.
    failures: u64,
    /// `--compare`: per request size, bounced and unbounced.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    compare: Vec<compare::Row>,
}

/// One entry of the memory table the device received.
#[derive(Serialize, Debug, Clone, Copy)]
pub(crate) struct RegionRow {
    /// Its device (guest physical) address.
    dma: u64,
    /// Its address in this process.
    cpu: u64,
    len: u64,
}

impl From<&RegionInfo> for RegionRow {
    fn from(r: &RegionInfo) -> Self {
        Self {
            dma: r.dma,
            cpu: r.cpu,
            len: r.len,
        }
    }
}

pub(crate) fn run(args: &Args) -> Result<(), Error> {
    let size = parse_arg_size("--size", &args.size)?;
    let pool = parse_arg_size("--pool", &args.pool)?;
    if size == 0 || size % SECTOR != 0 {
        return Err(Error::BadArgument {
            arg: "--size",
            why: format!("must be a non-zero multiple of {SECTOR} bytes, not {size}"),
        });
    }
    if args.depth == 0 {
        return Err(Error::BadArgument {
            arg: "--depth",
            why: "must be at least 1".into(),
        });
    }
    let choice = DeviceChoice::parse(&args.device);
    if args.compare && matches!(choice, DeviceChoice::Socket(_)) {
        return Err(Error::BadArgument {
            arg: "--compare",
            why: "starts a fresh device for every run: use it with --device qemu or builtin".into(),
        });
    }
    let patience = Duration::from_secs(args.timeout.max(1));
    let dir =
        tempfile::tempdir().map_err(|e| Error::Demo(format!("a temporary directory: {e}")))?;

    // The restricted tlb: its pool is a memfd, the one region the device
    // will be given.
    let provider = Arc::new(MemfdProvider::new("swiotlb-demo"));
    let pool_len = usize::try_from(pool).unwrap_or(usize::MAX);
    let growth = Growth::new(provider.clone(), GrowConfig::new(pool_len, pool_len));
    let tlb: IoTlb = IoTlb::growing(TlbKind::Restricted, growth)
        .map_err(|e| Error::Demo(format!("the restricted pool: {e}")))?
        .with_name(TLB_NAME)
        .with_wait_timeout(u64::try_from(patience.as_nanos()).unwrap_or(u64::MAX));
    let largest = tlb.first_pool().max_mapping_size(0);
    let platform: &'static Platform = Box::leak(Box::new(Platform::new().with_restricted(tlb)));
    let dev = Device::new(DmaMask::BITS_64).with_restricted_tlb(TLB_NAME);
    BouncedHal::bind(platform, dev, HalOptions::new().with_name("virtio-blk"))
        .map_err(|e| Error::Demo(e.to_string()))?;

    let sizes = mix(largest);
    let writes = plan(size, &sizes, &mut plan_rng(args.seed, 1));
    let reads = plan(size, &sizes, &mut plan_rng(args.seed, 2));
    let bar = progress::Bar::new(2 * size, args.json);
    let runner = DeviceRun {
        choice: &choice,
        dir: dir.path(),
        size,
        seed: args.seed,
        depth: args.depth,
        patience,
    };
    let done = runner.run::<BouncedHal, _>(
        &[],
        &provider,
        &writes,
        &reads,
        &HeapBuffers::default(),
        &bar,
    )?;
    bar.finish();

    let stats = platform
        .restricted_tlb(TLB_NAME.into())
        .expect("the demo's tlb")
        .stats();
    let mb = |bytes: u64, t: Duration| bytes as f64 / t.as_secs_f64() / 1e6;
    let mut report = Report {
        device: choice.describe(),
        bytes_verified: size,
        requests: (writes.len() + reads.len()) as u64,
        request_sizes: sizes,
        mb_per_s: mb(2 * size, done.write + done.read),
        write_mb_per_s: mb(size, done.write),
        read_mb_per_s: mb(size, done.read),
        regions_shared: done.regions.len(),
        shared_bytes: done.regions.iter().map(|r| r.len).sum(),
        regions: done.regions.iter().map(RegionRow::from).collect(),
        io_tlb_nslabs: stats.pool.io_tlb_nslabs,
        io_tlb_used_hiwater: stats.pool.io_tlb_used_hiwater,
        bytes_to_device: stats.pool.bytes_to_device,
        bytes_from_device: stats.pool.bytes_from_device,
        failures: stats.pool.total_failures(),
        compare: Vec::new(),
    };
    if args.compare {
        report.compare = compare::run(&runner, &provider, largest, args.json)?;
    }
    print(&report, args.json)
}

fn parse_arg_size(arg: &'static str, text: &str) -> Result<u64, Error> {
    parse_size(text).map_err(|e| Error::BadArgument {
        arg,
        why: e.to_string(),
    })
}

/// One device started, driven and stopped: what to start, where, and how
/// to drive it.
pub(crate) struct DeviceRun<'a> {
    choice: &'a DeviceChoice,
    dir: &'a std::path::Path,
    /// Bytes the device must hold.
    size: u64,
    seed: u64,
    depth: usize,
    patience: Duration,
}

/// What a run measured and saw.
pub(crate) struct Done {
    write: Duration,
    read: Duration,
    /// The memory table the device held at the end.
    regions: Vec<RegionInfo>,
}

impl DeviceRun<'_> {
    /// Starts the device, gives it `regions` and every region of
    /// `provider` (now and as they come), drives the unmodified driver
    /// through the `Hal` `H` with `writes` then `reads` (checked), and
    /// stops the device.
    fn run<H: virtio_drivers::Hal, S: Buffers>(
        &self,
        regions: &[RegionInfo],
        provider: &MemfdProvider,
        writes: &[Req],
        reads: &[Req],
        bufs: &S,
        bar: &progress::Bar,
    ) -> Result<Done, Error> {
        let device = RunningDevice::start(self.choice, self.dir, self.size, self.patience)?;
        let done = self.drive::<H, S>(&device, regions, provider, writes, reads, bufs, bar);
        // What the device said, when it failed, to the message.
        let done = done.map_err(|e| match (e, device.log_tail()) {
            (Error::Demo(m), Some(log)) => {
                Error::Demo(format!("{m}; {} said: {log}", device.name()))
            }
            (e, _) => e,
        });
        drop(device);
        done
    }

    /// [`run`](Self::run) on a device that is up.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site per mode, each naming every part"
    )]
    fn drive<H: virtio_drivers::Hal, S: Buffers>(
        &self,
        device: &RunningDevice,
        regions: &[RegionInfo],
        provider: &MemfdProvider,
        writes: &[Req],
        reads: &[Req],
        bufs: &S,
        bar: &progress::Bar,
    ) -> Result<Done, Error> {
        let mut table = regions.to_vec();
        table.extend(provider.regions());
        let transport = VhostUserTransport::connect(
            device.socket(),
            DeviceType::Block,
            QUEUE_SIZE,
            &table,
            self.patience,
        )
        .map_err(|e| Error::Demo(e.to_string()))?;
        let handle = transport.handle();
        // Regions the provider adds from now on (a growing tlb's pools,
        // coherent pages) reach the device before they are used.
        // Held to the end of the run; the device hears of nothing after.
        let _subscription = provider
            .subscribe_knowing(Arc::new(handle.clone()), &table)
            .map_err(|e| Error::Demo(format!("the device refused a region: {e}")))?;
        let mut disk = VirtIOBlk::<H, _>::new(transport)
            .map_err(|e| Error::Demo(format!("virtio-blk on {}: {e}", device.name())))?;
        let capacity = disk.capacity() * SECTOR;
        if capacity < self.size {
            return Err(Error::BadArgument {
                arg: "--size",
                why: format!(
                    "is {} but the device holds {}",
                    human(self.size),
                    human(capacity)
                ),
            });
        }
        let io = Io {
            seed: self.seed,
            depth: self.depth,
            patience: self.patience,
            handle: &handle,
        };
        bar.phase("write");
        let write = io.pass(&mut disk, writes, true, bufs, bar)?;
        bar.phase("verify");
        let read = io.pass(&mut disk, reads, false, bufs, bar)?;
        let regions = handle.regions();
        // The driver gives its rings back before the device goes.
        drop(disk);
        Ok(Done {
            write,
            read,
            regions,
        })
    }
}

/// How the demo drives a disk: its seed, depth and patience, and the
/// device's call eventfd to wait on.
struct Io<'a> {
    seed: u64,
    depth: usize,
    patience: Duration,
    handle: &'a DeviceHandle,
}

impl Io<'_> {
    /// Writes the pattern with the requests of `plan` (`write`), or reads
    /// them and checks every byte against it, in buffers from `bufs`; the
    /// time it took.
    fn pass<H: virtio_drivers::Hal, S: Buffers>(
        &self,
        disk: &mut VirtIOBlk<H, VhostUserTransport>,
        plan: &[Req],
        write: bool,
        bufs: &S,
        bar: &progress::Bar,
    ) -> Result<Duration, Error> {
        let seed = self.seed;
        let ops = plan.iter().map(|r| {
            let mut buf = bufs.take(r.len);
            if write {
                fill(seed, r.offset, buf.as_mut());
            } else {
                // A stale byte must not pass for a read one.
                buf.as_mut().fill(0x5a);
            }
            BlockOp {
                sector: r.sector(),
                buf,
                write,
            }
        });
        let mut bad = None;
        let t = Instant::now();
        self.run(disk, ops, |mut op| {
            if !write && bad.is_none() {
                bad = first_mismatch(seed, op.sector * SECTOR, op.buf.as_mut());
            }
            bar.add(op.buf.as_mut().len() as u64);
            bufs.give(op.buf);
        })?;
        let elapsed = t.elapsed();
        if let Some((at, got, want)) = bad {
            return Err(Error::Demo(format!(
                "data mismatch at disk byte {at}: read {got:#04x}, wrote {want:#04x}"
            )));
        }
        Ok(elapsed)
    }

    fn run<B: swiotlb::DmaBuffer, H: virtio_drivers::Hal>(
        &self,
        disk: &mut VirtIOBlk<H, VhostUserTransport>,
        ops: impl Iterator<Item = BlockOp<B>>,
        done: impl FnMut(BlockOp<B>),
    ) -> Result<(), Error> {
        let handle = self.handle;
        blk::run(disk, ops, self.depth, self.patience, handle, done).map_err(|e| {
            match handle.failure() {
                Some(f) => Error::Demo(format!("{e} ({f})")),
                None => Error::Demo(e.to_string()),
            }
        })
    }
}

/// Where the driver's buffers come from: at most `depth` are out at once
/// (the I/O loop takes a request only when a slot is free).
pub(crate) trait Buffers {
    type B: swiotlb::DmaBuffer + AsMut<[u8]>;
    /// A buffer of at least `len` bytes.
    fn take(&self, len: usize) -> Self::B;
    /// A buffer back, its request complete.
    fn give(&self, b: Self::B);
}

/// Heap buffers, which the device never sees: the bounced run. They are
/// reused, as the unbounced run reuses its shared chunks, so that neither
/// run pays for fresh pages on every request.
#[derive(Default)]
struct HeapBuffers(std::cell::RefCell<Vec<Vec<u8>>>);

impl Buffers for HeapBuffers {
    type B = Vec<u8>;
    fn take(&self, len: usize) -> Vec<u8> {
        let mut b = self.0.borrow_mut().pop().unwrap_or_default();
        // Exactly the request's length: the driver shares the whole buffer.
        b.resize(len, 0);
        b
    }
    fn give(&self, b: Vec<u8>) {
        self.0.borrow_mut().push(b);
    }
}

fn print(r: &Report, json: bool) -> Result<(), Error> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let w = |e| Error::WriteReport(e);
    if json {
        serde_json::to_writer_pretty(&mut out, r).map_err(Error::Json)?;
        writeln!(out).map_err(w)?;
        return Ok(());
    }
    writeln!(
        out,
        "device {}: wrote and read back {} in {} requests ({} to {} each), every byte verified",
        r.device,
        human(r.bytes_verified),
        r.requests,
        human(*r.request_sizes.first().unwrap_or(&0) as u64),
        human(*r.request_sizes.last().unwrap_or(&0) as u64),
    )
    .map_err(w)?;
    writeln!(
        out,
        "throughput: {:.1} MB/s (write {:.1}, read {:.1})",
        r.mb_per_s, r.write_mb_per_s, r.read_mb_per_s
    )
    .map_err(w)?;
    writeln!(
        out,
        "restricted tlb {TLB_NAME}: io_tlb_nslabs {} io_tlb_used_hiwater {} bytes_to_device {} bytes_from_device {} failures {}",
        r.io_tlb_nslabs, r.io_tlb_used_hiwater, r.bytes_to_device, r.bytes_from_device, r.failures
    )
    .map_err(w)?;
    writeln!(
        out,
        "the device's memory table: {} region(s), {} in all",
        r.regions_shared,
        human(r.shared_bytes)
    )
    .map_err(w)?;
    for g in &r.regions {
        writeln!(
            out,
            "  dma {:#014x}..{:#014x}  {:>9}  (here at {:#x})",
            g.dma,
            g.dma + g.len,
            human(g.len),
            g.cpu
        )
        .map_err(w)?;
    }
    if !r.compare.is_empty() {
        compare::print(&mut out, &r.compare).map_err(w)?;
    }
    Ok(())
}

/// Where the demo's image lives, for the devices it starts.
fn image_path(dir: &std::path::Path) -> PathBuf {
    dir.join("disk.img")
}
