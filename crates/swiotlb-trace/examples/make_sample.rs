//! Writes the sample of the README: `sev-nvme.trace.gz`, an ftrace `trace`
//! file of an AMD SEV guest, and `sev-nvme.dmesg`, its kernel log.
//!
//! ```text
//! cargo run -p swiotlb-trace --example make_sample -- samples/
//! ```
//!
//! Nothing here was captured from a machine: a small discrete-event model
//! of a 4-CPU guest runs fio on an NVMe disk with network traffic beside
//! it, and writes every DMA event in the kernel's own format. Every bounce
//! is placed by `swiotlb::sim::SlotPool<NextFit>`, the allocator of
//! Linux's `kernel/dma/swiotlb.c` slot for slot, on the guest's pool (16384
//! slots in 4 areas at `0xbde00000`), so every bounce address in the trace
//! is the one Linux would have chosen, and a map fails exactly when Linux's
//! would. The kernel behaviours it follows are those of Linux 6.13:
//!
//! - A confidential guest bounces every map (`swiotlb_bounced ... FORCE`),
//!   and prints the original's device address with the encryption bit
//!   set (bit 51 here); `dma_map_*` print the CPU's address, without it.
//! - `swiotlb_bounced` comes before the slots are searched
//!   (`swiotlb_map`), `dma_map_page` and `dma_map_sg` after the whole map;
//!   `dma_unmap_page` after the slots are freed, `dma_unmap_sg` before.
//! - A list that fails part way gives back the entries it had placed
//!   without a trace event (`dma_direct_map_sg` unmaps them), and
//!   `dma_map_sg_err` names every entry's CPU address with `err=-5`
//!   (dma-direct's `-EIO`).
//! - NVMe (`min_align_mask` 0xfff) maps a one-segment request with
//!   `dma_map_page` and others with `dma_map_sg`, the latter with
//!   `DMA_ATTR_NO_WARN`: its failures never reach the kernel log. A failed
//!   map is `BLK_STS_RESOURCE`: blk-mq keeps the request and dispatches it
//!   again from kblockd when one of the queue's requests completes, or
//!   after 3 ms when none is in flight.
//! - virtio-net maps every descriptor with `dma_map_page` (virtio_ring
//!   never uses `dma_map_sg`), a transmit of several descriptors also its
//!   indirect table after them; receive buffers are 1536 bytes, mapped one
//!   by one (the premapped receive mode off). A failed transmit unmaps
//!   what it had mapped and drops the packet ("Unexpected TXQ"); a failed
//!   refill is retried from a workqueue.
//! - "swiotlb buffer is full" is `dev_warn_ratelimited`: at most 10 lines
//!   in 5 seconds.
//!
//! Running it twice writes the same bytes: the model draws from one seeded
//! generator and the gzip header carries no time or file name.

#![forbid(unsafe_code)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use flate2::{Compression, GzBuilder};
use rand::rngs::Xoshiro256PlusPlus as Rng;
use rand::{RngExt as _, SeedableRng as _};
use swiotlb::sim::{MapParams, Placed, SlotPool};
use swiotlb::{NextFit, PhysAddr, PoolConfig};

/// The one seed of every draw.
const SEED: u64 = 0x5e5_1302;

const US: u64 = 1_000;
const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;

/// The guest's pool: `swiotlb=16384` on its command line, 4 areas (one
/// per CPU), where memblock put it.
const NSLABS: u32 = 16384;
const NAREAS: u32 = 4;
const POOL_BASE: u64 = 0xbde0_0000;
/// The SEV encryption bit of this guest's CPU (the C-bit, CPUID
/// 0x8000001f).
const C_BIT: u64 = 1 << 51;
const NCPU: usize = 4;

/// When the trace begins, in the trace clock (seconds since boot).
const T_START: u64 = 1302 * SEC + 117_342 * US;

/// CPU time per byte copied between an original and its bounce (a
/// memcpy between encrypted and shared memory), in picoseconds.
const COPY_PS: u64 = 150;

/// Receive descriptors per queue (QEMU's default `rx_queue_size`) and the
/// mergeable receive buffer's size.
const RX_RING: usize = 256;
const RX_BUF: u64 = 1536;
/// NAPI's budget; a poll refills when more than half of it is free.
const NAPI_BUDGET: usize = 64;
/// Bytes of `struct virtio_net_hdr_mrg_rxbuf`, pushed in front of every
/// transmitted frame.
const VNET_HDR: u64 = 12;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dev {
    Nvme,
    Net,
}

impl Dev {
    fn name(self) -> &'static str {
        match self {
            Dev::Nvme => "0000:00:04.0",
            Dev::Net => "0000:00:03.0",
        }
    }
    /// The driver `dev_warn` names.
    fn driver(self) -> &'static str {
        match self {
            Dev::Nvme => "nvme",
            Dev::Net => "virtio-pci",
        }
    }
    fn min_align_mask(self) -> u64 {
        match self {
            Dev::Nvme => 0xfff,
            Dev::Net => 0,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    ToDevice,
    FromDevice,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::ToDevice => "TO_DEVICE",
            Dir::FromDevice => "FROM_DEVICE",
        }
    }
}

/// The task a line names.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Task {
    comm: &'static str,
    pid: u32,
}

const IDLE: Task = Task {
    comm: "<idle>",
    pid: 0,
};
const BASH: Task = Task {
    comm: "bash",
    pid: 2291,
};
const IP: Task = Task {
    comm: "ip",
    pid: 2297,
};
const SSHD: Task = Task {
    comm: "sshd",
    pid: 1187,
};
const SSHD_CPU: usize = 3;
/// kblockd's high-priority workers, one per CPU.
const KBLOCKD: [Task; NCPU] = [
    Task {
        comm: "kworker/0:1H",
        pid: 96,
    },
    Task {
        comm: "kworker/1:1H",
        pid: 102,
    },
    Task {
        comm: "kworker/2:1H",
        pid: 108,
    },
    Task {
        comm: "kworker/3:1H",
        pid: 114,
    },
];
/// The system workqueue's workers (virtio-net's refill work).
const EVENTS: [Task; NCPU] = [
    Task {
        comm: "kworker/0:2",
        pid: 1409,
    },
    Task {
        comm: "kworker/1:0",
        pid: 2113,
    },
    Task {
        comm: "kworker/2:1",
        pid: 1822,
    },
    Task {
        comm: "kworker/3:2",
        pid: 1733,
    },
];

/// What a line is printed in: the task and the flags column.
#[derive(Clone, Copy)]
struct Ctx {
    t: u64,
    cpu: usize,
    task: Task,
    flags: &'static str,
}

/// `___ratelimit` with `DEFAULT_RATELIMIT_INTERVAL` and `_BURST`: at most
/// 10 messages in 5 seconds.
#[derive(Default)]
struct Ratelimit {
    begin: Option<u64>,
    printed: u32,
}

impl Ratelimit {
    fn allow(&mut self, t: u64) -> bool {
        if self.begin.is_none_or(|b| t - b >= 5 * SEC) {
            self.begin = Some(t);
            self.printed = 0;
        }
        self.printed += 1;
        self.printed <= 10
    }
}

/// The kernel's side: the pool, the trace and the log.
struct Kernel {
    pool: SlotPool<NextFit>,
    trace: String,
    events: u64,
    /// Lines after boot, with their time.
    log: Vec<(u64, String)>,
    swiotlb_warn: Ratelimit,
    net_warn: Ratelimit,
    maps: u64,
    failures: u64,
    failures_nvme: u64,
}

fn hex_list(v: impl IntoIterator<Item = u64>) -> String {
    let mut s = String::from("{");
    for (i, x) in v.into_iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{x:#x}");
    }
    s.push('}');
    s
}

impl Kernel {
    fn new() -> Self {
        Kernel {
            pool: SlotPool::new(NSLABS, PoolConfig::with_areas(NAREAS), POOL_BASE)
                .expect("the guest's pool"),
            trace: String::new(),
            events: 0,
            log: Vec::new(),
            swiotlb_warn: Ratelimit::default(),
            net_warn: Ratelimit::default(),
            maps: 0,
            failures: 0,
            failures_nvme: 0,
        }
    }

    fn line(&mut self, c: &Ctx, body: std::fmt::Arguments<'_>) {
        let _ = writeln!(
            self.trace,
            "{:>16}-{:<7} [{:03}] {} {:>5}.{:06}: {}",
            c.task.comm,
            c.task.pid,
            c.cpu,
            c.flags,
            c.t / SEC,
            c.t % SEC / US,
            body
        );
        self.events += 1;
    }

    /// `swiotlb_map`: the event, then the slots (`None` when the pool has
    /// none to give).
    fn bounce(&mut self, c: &Ctx, dev: Dev, orig: u64, size: u64, warn: bool) -> Option<Placed> {
        self.line(
            c,
            format_args!(
                "swiotlb_bounced: dev_name: {} dma_mask=ffffffffffffffff dev_addr={:x} size={size} FORCE",
                dev.name(),
                orig | C_BIT
            ),
        );
        let params = MapParams {
            orig: PhysAddr(orig),
            min_align_mask: dev.min_align_mask(),
            cpu: c.cpu,
            ..MapParams::default()
        };
        match self.pool.map(size as usize, params) {
            Ok(p) => Some(p),
            Err(_) => {
                self.failures += 1;
                if dev == Dev::Nvme {
                    self.failures_nvme += 1;
                }
                if warn && self.swiotlb_warn.allow(c.t) {
                    let used = self.pool.stats().io_tlb_used;
                    self.log.push((
                        c.t,
                        format!(
                            "{} {}: swiotlb buffer is full (sz: {size} bytes), total {NSLABS} (slots), used {used} (slots)",
                            dev.driver(),
                            dev.name()
                        ),
                    ));
                }
                None
            }
        }
    }

    fn release(&mut self, p: Placed) {
        self.pool.unmap(p).expect("slots this model holds");
    }

    fn map_page(&mut self, c: &Ctx, dev: Dev, dir: Dir, p: Option<&Placed>, size: u64, phys: u64) {
        self.maps += 1;
        let dma = p.map_or(u64::MAX, |p| p.dma.0);
        self.line(
            c,
            format_args!(
                "dma_map_page: {} dir={} dma_addr={dma:x} size={size} phys_addr={phys:x} attrs=",
                dev.name(),
                dir.name()
            ),
        );
    }

    fn unmap_page(&mut self, c: &Ctx, dev: Dev, dir: Dir, p: &Placed, size: u64) {
        self.line(
            c,
            format_args!(
                "dma_unmap_page: {} dir={} dma_addr={:x} size={size} attrs=",
                dev.name(),
                dir.name(),
                p.dma.0
            ),
        );
    }

    fn map_sg(&mut self, c: &Ctx, dev: Dev, dir: Dir, entries: &[(u64, u64)], placed: &[Placed]) {
        self.maps += 1;
        let n = entries.len();
        self.line(
            c,
            format_args!(
                "dma_map_sg: {} dir={} nents={n}/{n} ents={n}/{n} dma_addrs={} sizes={} phys_addrs={} attrs=NO_WARN",
                dev.name(),
                dir.name(),
                hex_list(placed.iter().map(|p| p.dma.0)),
                hex_list(entries.iter().map(|e| e.1)),
                hex_list(entries.iter().map(|e| e.0)),
            ),
        );
    }

    fn map_sg_err(&mut self, c: &Ctx, dev: Dev, dir: Dir, entries: &[(u64, u64)]) {
        self.maps += 1;
        self.line(
            c,
            format_args!(
                "dma_map_sg_err: {} dir={} dma_addrs={} err=-5 attrs=NO_WARN",
                dev.name(),
                dir.name(),
                hex_list(entries.iter().map(|e| e.0)),
            ),
        );
    }

    fn unmap_sg(&mut self, c: &Ctx, dev: Dev, dir: Dir, entries: &[(u64, u64)]) {
        self.line(
            c,
            format_args!(
                "dma_unmap_sg: {} dir={} phys_addrs={} attrs=",
                dev.name(),
                dir.name(),
                hex_list(entries.iter().map(|e| e.0)),
            ),
        );
    }
}

/// Guest physical memory handed out as distinct pages: 3 GiB below the
/// PCI hole (less the pool) and 5 GiB above 4 GiB.
struct Memory {
    taken: HashSet<u64>,
}

impl Memory {
    /// A free block of `2^order` pages, aligned to its size.
    fn block(&mut self, rng: &mut Rng, order: u32) -> u64 {
        let n = 1u64 << order;
        loop {
            let pfn = if rng.random_bool(0.85) {
                rng.random_range(0x10_0000u64..0x24_0000)
            } else {
                rng.random_range(0x1000u64..0xb_d000)
            } & !(n - 1);
            if (pfn..pfn + n).all(|p| !self.taken.contains(&p)) {
                self.taken.extend(pfn..pfn + n);
                return pfn << 12;
            }
        }
    }
}

/// What fio runs in a phase.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Workload {
    /// 4 KiB random reads into buffers at sector offsets in huge pages:
    /// one segment each, `dma_map_page`.
    RandRead4k,
    /// 128 KiB writes from buffers of scattered pages: 32-entry lists.
    Write128k,
    /// 128 KiB reads into buffers of scattered pages.
    Read128k,
}

struct PhaseSpec {
    marker: &'static str,
    workload: Workload,
    /// fio's `iodepth`, per job.
    iodepth: usize,
    /// I/Os per job (fio's `number_ios`).
    ios: usize,
    /// The first job's PID (fio forks one process per job, on CPUs 0..4).
    pid: u32,
}

const PHASES: [PhaseSpec; 3] = [
    PhaseSpec {
        marker: "fio randread-4k qd32 start",
        workload: Workload::RandRead4k,
        iodepth: 32,
        ios: 1024,
        pid: 2311,
    },
    PhaseSpec {
        marker: "fio write-128k qd32 start",
        workload: Workload::Write128k,
        iodepth: 32,
        ios: 150,
        pid: 2334,
    },
    PhaseSpec {
        marker: "fio read-128k qd60 start",
        workload: Workload::Read128k,
        iodepth: 60,
        ios: 220,
        pid: 2357,
    },
];

/// One fio job: a process pinned to a CPU with `iodepth` I/O units.
struct Job {
    task: Task,
    cpu: usize,
    workload: Workload,
    iodepth: usize,
    remaining: usize,
    outstanding: usize,
    /// Each I/O unit's buffer, as the segments the block layer makes of it.
    units: Vec<Vec<(u64, u64)>>,
    free_units: VecDeque<usize>,
    /// Requests completed and not yet reaped.
    completed: Vec<usize>,
    wake_pending: bool,
}

/// An NVMe request.
struct Req {
    job: usize,
    unit: usize,
    cpu: usize,
    dir: Dir,
    entries: Vec<(u64, u64)>,
    /// One segment: `dma_map_page`; else `dma_map_sg`.
    single: bool,
    placed: Vec<Placed>,
}

/// A blk-mq hardware queue (one per CPU).
#[derive(Default)]
struct Hctx {
    /// Requests the driver refused, and those queued behind them.
    dispatch: VecDeque<usize>,
    /// Waiting for a completion to run the queue again.
    restart: bool,
    kblockd_pending: bool,
    inflight: usize,
    /// Completions waiting for the interrupt handler.
    cq: VecDeque<usize>,
    irq_pending: bool,
}

/// A receive buffer given to the device.
struct RxBuf {
    placed: Placed,
}

#[derive(Default)]
struct RxQueue {
    posted: VecDeque<RxBuf>,
    used: VecDeque<RxBuf>,
    napi_pending: bool,
    refill_pending: bool,
    /// The 32 KiB page fragment buffers are carved from, and the offset.
    frag: Option<(u64, u64)>,
    /// Packets of the bulk flow received since the last ACK.
    unacked: u32,
    /// Packets the device dropped for want of a buffer.
    dropped: u64,
}

/// A packet being sent: its descriptors, the indirect table's address
/// when there are several, and what is mapped.
struct Skb {
    entries: Vec<(u64, u64)>,
    indirect: u64,
    mapped: Vec<(Placed, u64)>,
}

#[derive(Default)]
struct TxQueue {
    inflight: VecDeque<Skb>,
    done: VecDeque<Skb>,
    napi_pending: bool,
}

/// A piece of work on a CPU, run one step (at most a few lines at one
/// instant) at a time.
enum Item {
    /// fio reaps its completions and submits new I/Os.
    Fio { job: usize },
    /// `nvme_queue_rq` of one request: one bounce per step, then the map.
    Submit {
        req: usize,
        task: Task,
        from_dispatch: bool,
        placed: Vec<Placed>,
    },
    /// kblockd runs a hardware queue's dispatch list.
    Kblockd { cpu: usize },
    /// `echo TEXT > trace_marker`.
    Marker { phase: usize },
    /// `ip link set enp0s3 up`: every receive ring filled.
    LinkUp { q: usize },
    /// virtio-net's refill work.
    Refill { q: usize },
    /// `start_xmit` of one packet, and of `more` after it (sshd's burst).
    Xmit {
        skb: Skb,
        q: usize,
        softirq: bool,
        more: usize,
    },
    /// The NVMe interrupt handler: completions.
    NvmeIrq { cpu: usize },
    /// NAPI receive poll: packets, ACKs, refill.
    RxNapi {
        q: usize,
        done: usize,
        refilling: bool,
    },
    /// NAPI transmit poll: sent packets unmapped.
    TxNapi { q: usize },
}

impl Item {
    fn irq(&self) -> bool {
        matches!(
            self,
            Item::NvmeIrq { .. }
                | Item::RxNapi { .. }
                | Item::TxNapi { .. }
                | Item::Xmit { softirq: true, .. }
        )
    }
}

/// What a step asks for next.
enum Next {
    /// Another step of the same item.
    Again,
    /// Done.
    Done,
    /// Done, and this item runs next on the same CPU (kblockd going on
    /// to the next request).
    Then(Item),
}

struct Step {
    cost: u64,
    next: Next,
}

fn step(cost: u64, next: Next) -> Step {
    Step { cost, next }
}

#[derive(Default)]
struct Cpu {
    stack: Vec<Item>,
    irqs: VecDeque<Item>,
    procs: VecDeque<Item>,
    scheduled: bool,
}

/// Things that happen at a time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Ev {
    /// A CPU runs its next step.
    Step(usize),
    /// The device finished a request.
    NvmeDone(usize),
    /// A packet arrives on a receive queue.
    Packet(usize),
    /// The host consumed the oldest packet of a transmit queue.
    TxDone(usize),
    /// fio's job wakes to reap.
    FioWake(usize),
    /// kblockd is woken for a CPU's hardware queue.
    Kblockd(usize),
    /// The refill work of a queue runs.
    Refill(usize),
    /// A phase's marker is written.
    Phase(usize),
    /// sshd has data to send.
    SshSend,
    /// The last marker, then the end of the trace.
    Done,
    End,
}

struct Sim {
    k: Kernel,
    rng: Rng,
    mem: Memory,
    heap: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    cpus: Vec<Cpu>,
    hctx: Vec<Hctx>,
    reqs: Vec<Req>,
    jobs: Vec<Job>,
    /// Requests the device holds.
    device_inflight: usize,
    /// When the device has moved the data of every request it holds.
    device_free: u64,
    rx: Vec<RxQueue>,
    tx: Vec<TxQueue>,
    /// sshd's socket page fragment.
    ssh_frag: Option<(u64, u64)>,
    net_on: bool,
    ended: bool,
    phase: usize,
    phase_jobs_left: usize,
    /// Marker times, for the summary.
    marks: Vec<(u64, String)>,
    /// Most slots in use in each phase (before the first marker: 0).
    phase_peak: Vec<u64>,
}

impl Sim {
    fn new() -> Self {
        Sim {
            k: Kernel::new(),
            rng: Rng::seed_from_u64(SEED),
            mem: Memory {
                taken: HashSet::new(),
            },
            heap: BinaryHeap::new(),
            seq: 0,
            cpus: (0..NCPU).map(|_| Cpu::default()).collect(),
            hctx: (0..NCPU).map(|_| Hctx::default()).collect(),
            reqs: Vec::new(),
            jobs: Vec::new(),
            device_inflight: 0,
            device_free: 0,
            rx: (0..NCPU).map(|_| RxQueue::default()).collect(),
            tx: (0..NCPU).map(|_| TxQueue::default()).collect(),
            ssh_frag: None,
            net_on: false,
            ended: false,
            phase: 0,
            phase_jobs_left: 0,
            marks: Vec::new(),
            phase_peak: vec![0],
        }
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse((t, self.seq, ev)));
    }

    fn us(&mut self, lo: u64, hi: u64) -> u64 {
        self.rng.random_range(lo * US..=hi * US)
    }

    /// Queues `item` on `cpu` at `t`.
    fn run(&mut self, t: u64, cpu: usize, item: Item) {
        let c = &mut self.cpus[cpu];
        if item.irq() {
            c.irqs.push_back(item);
        } else {
            c.procs.push_back(item);
        }
        if !c.scheduled {
            c.scheduled = true;
            self.at(t, Ev::Step(cpu));
        }
    }

    fn main_loop(&mut self) {
        while let Some(Reverse((t, _, ev))) = self.heap.pop() {
            if self.ended {
                break;
            }
            match ev {
                Ev::Step(cpu) => self.cpu_step(t, cpu),
                Ev::NvmeDone(r) => {
                    self.device_inflight -= 1;
                    let cpu = self.reqs[r].cpu;
                    let h = &mut self.hctx[cpu];
                    h.cq.push_back(r);
                    if !h.irq_pending {
                        h.irq_pending = true;
                        self.run(t, cpu, Item::NvmeIrq { cpu });
                    }
                }
                Ev::Packet(q) => self.packet(t, q),
                Ev::TxDone(q) => {
                    if let Some(skb) = self.tx[q].inflight.pop_front() {
                        self.tx[q].done.push_back(skb);
                        if !self.tx[q].napi_pending {
                            self.tx[q].napi_pending = true;
                            self.run(t, q, Item::TxNapi { q });
                        }
                    }
                }
                Ev::FioWake(j) => {
                    let cpu = self.jobs[j].cpu;
                    self.run(t, cpu, Item::Fio { job: j });
                }
                Ev::Kblockd(cpu) => self.run(t, cpu, Item::Kblockd { cpu }),
                Ev::Refill(q) => self.run(t, q, Item::Refill { q }),
                Ev::Phase(p) => self.run(t, 0, Item::Marker { phase: p }),
                Ev::SshSend => {
                    if self.net_on {
                        let skbs = if self.rng.random_bool(0.15) {
                            self.rng.random_range(12..=24)
                        } else {
                            self.rng.random_range(1..=8)
                        };
                        let skb = self.gso_skb();
                        self.run(
                            t,
                            SSHD_CPU,
                            Item::Xmit {
                                skb,
                                q: SSHD_CPU,
                                softirq: false,
                                more: skbs - 1,
                            },
                        );
                        let next = t + self.us(300, 2500);
                        self.at(next, Ev::SshSend);
                    }
                }
                Ev::Done => self.run(
                    t,
                    0,
                    Item::Marker {
                        phase: PHASES.len(),
                    },
                ),
                Ev::End => self.ended = true,
            }
        }
    }

    fn cpu_step(&mut self, t: u64, cpu: usize) {
        let c = &mut self.cpus[cpu];
        // An interrupt nests over a process item at a step boundary.
        if !c.irqs.is_empty() && c.stack.last().is_none_or(|i| !i.irq()) {
            let i = c.irqs.pop_front().expect("not empty");
            c.stack.push(i);
        }
        if c.stack.is_empty() {
            match c.procs.pop_front() {
                Some(p) => c.stack.push(p),
                None => {
                    c.scheduled = false;
                    return;
                }
            }
        }
        let mut item = c.stack.pop().expect("an item");
        let below = self.cpus[cpu]
            .stack
            .last()
            .map(|i| self.task_of(i))
            .unwrap_or(IDLE);
        let ctx = Ctx {
            t,
            cpu,
            task: if item.irq() {
                below
            } else {
                self.task_of(&item)
            },
            flags: self.flags_of(&item, below != IDLE),
        };
        let s = self.step(&mut item, &ctx);
        let c = &mut self.cpus[cpu];
        match s.next {
            Next::Again => c.stack.push(item),
            Next::Done => {}
            Next::Then(i) => c.stack.push(i),
        }
        let used = self.k.pool.stats().io_tlb_used;
        let p = self.phase_peak.last_mut().expect("a phase");
        *p = (*p).max(used);
        self.at(t + s.cost.max(200), Ev::Step(cpu));
    }

    fn task_of(&self, item: &Item) -> Task {
        match item {
            Item::Fio { job } => self.jobs[*job].task,
            Item::Submit { task, .. } => *task,
            Item::Kblockd { cpu } => KBLOCKD[*cpu],
            Item::Marker { .. } => BASH,
            Item::LinkUp { .. } => IP,
            Item::Refill { q } => EVENTS[*q],
            Item::Xmit { .. } => SSHD,
            _ => IDLE,
        }
    }

    fn flags_of(&self, item: &Item, over_task: bool) -> &'static str {
        match item {
            Item::NvmeIrq { .. } => "d.h1.",
            Item::RxNapi { .. } | Item::TxNapi { .. } | Item::Xmit { softirq: true, .. } => {
                if over_task {
                    "..s2."
                } else {
                    "..s1."
                }
            }
            Item::Xmit { .. } => "b..1.",
            _ => ".....",
        }
    }

    fn step(&mut self, item: &mut Item, c: &Ctx) -> Step {
        match item {
            Item::Fio { job } => self.fio(*job, c),
            Item::Submit {
                req,
                task,
                from_dispatch,
                placed,
            } => self.submit(*req, *task, *from_dispatch, placed, c),
            Item::Kblockd { cpu } => {
                let cpu = *cpu;
                let h = &mut self.hctx[cpu];
                h.kblockd_pending = false;
                match h.dispatch.pop_front() {
                    Some(req) => step(
                        2 * US,
                        Next::Then(Item::Submit {
                            req,
                            task: KBLOCKD[cpu],
                            from_dispatch: true,
                            placed: Vec::new(),
                        }),
                    ),
                    None => step(US, Next::Done),
                }
            }
            Item::Marker { phase } => self.marker(*phase, c),
            Item::LinkUp { q } => {
                // virtnet_open: try_fill_recv(GFP_KERNEL) on each queue.
                if self.refill_one(*q, c, false) {
                    return step(900, Next::Again);
                }
                *q += 1;
                if *q < NCPU {
                    step(3 * US, Next::Again)
                } else {
                    step(US, Next::Done)
                }
            }
            Item::Refill { q } => {
                let q = *q;
                if self.refill_one(q, c, false) {
                    return step(900, Next::Again);
                }
                self.rx[q].refill_pending = false;
                if self.rx[q].posted.len() < RX_RING {
                    // Still short: `schedule_delayed_work(&vi->refill, HZ/2)`.
                    self.rx[q].refill_pending = true;
                    self.at(c.t + 500 * MS, Ev::Refill(q));
                }
                step(US, Next::Done)
            }
            Item::Xmit {
                skb,
                q,
                softirq,
                more,
            } => self.xmit(skb, *q, *softirq, *more, c),
            Item::NvmeIrq { cpu } => self.nvme_irq(*cpu, c),
            Item::RxNapi { q, done, refilling } => self.rx_napi(*q, done, refilling, c),
            Item::TxNapi { q } => self.tx_napi(*q, c),
        }
    }

    fn marker(&mut self, phase: usize, c: &Ctx) -> Step {
        let text = PHASES.get(phase).map_or("fio done", |p| p.marker);
        self.k.line(c, format_args!("tracing_mark_write: {text}"));
        self.marks.push((c.t, text.to_string()));
        self.phase_peak.push(self.k.pool.stats().io_tlb_used);
        match PHASES.get(phase) {
            Some(spec) => {
                self.phase = phase;
                self.start_jobs(spec, c.t);
            }
            None => {
                let end = c.t + 12 * MS;
                self.at(end, Ev::End);
            }
        }
        step(2 * US, Next::Done)
    }

    /// fio forks its jobs a few milliseconds after the marker.
    fn start_jobs(&mut self, spec: &PhaseSpec, t: u64) {
        self.phase_jobs_left = NCPU;
        for cpu in 0..NCPU {
            let units: Vec<Vec<(u64, u64)>> = match spec.workload {
                Workload::RandRead4k => {
                    // A huge page per job, buffers 4 KiB apart from a
                    // sector offset: each read is one segment that
                    // crosses a page boundary.
                    let base = self.mem.block(&mut self.rng, 9);
                    let off = [0x200, 0xa00, 0x600, 0xe00][cpu];
                    (0..spec.iodepth as u64)
                        .map(|i| vec![(base + off + i * 4096, 4096)])
                        .collect()
                }
                Workload::Write128k | Workload::Read128k => (0..spec.iodepth)
                    .map(|_| {
                        let mut pages: Vec<u64> = Vec::with_capacity(32);
                        while pages.len() < 32 {
                            let p = self.mem.block(&mut self.rng, 0);
                            // Physically adjacent pages would merge into
                            // one segment.
                            if pages.last().is_some_and(|l| p == l + 4096) {
                                continue;
                            }
                            pages.push(p);
                        }
                        pages.into_iter().map(|p| (p, 4096)).collect()
                    })
                    .collect(),
            };
            let j = self.jobs.len();
            self.jobs.push(Job {
                task: Task {
                    comm: "fio",
                    pid: spec.pid + cpu as u32,
                },
                cpu,
                workload: spec.workload,
                iodepth: spec.iodepth,
                remaining: spec.ios,
                outstanding: 0,
                free_units: (0..units.len()).collect(),
                units,
                completed: Vec::new(),
                wake_pending: true,
            });
            let start = t + 18 * MS + self.us(0, 900);
            self.at(start, Ev::FioWake(j));
        }
    }

    fn fio(&mut self, j: usize, c: &Ctx) -> Step {
        let job = &mut self.jobs[j];
        job.wake_pending = false;
        for r in std::mem::take(&mut job.completed) {
            job.outstanding -= 1;
            job.free_units.push_back(self.reqs[r].unit);
        }
        let n = (job.iodepth - job.outstanding).min(job.remaining);
        let mut new = Vec::with_capacity(n);
        for _ in 0..n {
            let unit = job.free_units.pop_front().expect("a free I/O unit");
            let (dir, single) = match job.workload {
                Workload::RandRead4k => (Dir::FromDevice, true),
                Workload::Write128k => (Dir::ToDevice, false),
                Workload::Read128k => (Dir::FromDevice, false),
            };
            let entries = job.units[unit].clone();
            job.outstanding += 1;
            job.remaining -= 1;
            new.push(self.reqs.len());
            self.reqs.push(Req {
                job: j,
                unit,
                cpu: c.cpu,
                dir,
                entries,
                single,
                placed: Vec::new(),
            });
        }
        if job.remaining == 0 && job.outstanding == 0 {
            self.job_done(c.t);
        }
        let task = self.jobs[j].task;
        let procs = &mut self.cpus[c.cpu].procs;
        for r in new.into_iter().rev() {
            procs.push_front(Item::Submit {
                req: r,
                task,
                from_dispatch: false,
                placed: Vec::new(),
            });
        }
        step(2 * US + n as u64 * 300, Next::Done)
    }

    fn job_done(&mut self, t: u64) {
        self.phase_jobs_left -= 1;
        if self.phase_jobs_left == 0 {
            let next = t + 30 * MS + self.us(0, 5000);
            if self.phase + 1 < PHASES.len() {
                self.at(next, Ev::Phase(self.phase + 1));
            } else {
                self.at(next, Ev::Done);
            }
        }
    }

    /// `nvme_queue_rq`'s maps: a bounce per step, then the map event and
    /// the command to the device; a failure puts the request on the
    /// dispatch list.
    fn submit(
        &mut self,
        r: usize,
        task: Task,
        from_dispatch: bool,
        placed: &mut Vec<Placed>,
        c: &Ctx,
    ) -> Step {
        let cpu = self.reqs[r].cpu;
        if placed.is_empty() && !from_dispatch && !self.hctx[cpu].dispatch.is_empty() {
            // blk-mq queues behind the requests it could not dispatch.
            self.hctx[cpu].dispatch.push_back(r);
            return step(US, Next::Done);
        }
        let req = &self.reqs[r];
        let (dir, single, k) = (req.dir, req.single, placed.len());
        if let Some(&(phys, len)) = req.entries.get(k) {
            match self.k.bounce(c, Dev::Nvme, phys, len, single) {
                Some(p) => {
                    placed.push(p);
                    if single {
                        // One segment: the map event at once.
                        self.k.map_page(c, Dev::Nvme, dir, Some(&p), len, phys);
                        return self.issue(r, std::mem::take(placed), task, from_dispatch, c);
                    }
                    step(300 + len * COPY_PS / 1000, Next::Again)
                }
                None => {
                    for p in placed.drain(..) {
                        self.k.release(p);
                    }
                    let entries = self.reqs[r].entries.clone();
                    if single {
                        self.k.map_page(c, Dev::Nvme, dir, None, len, phys);
                    } else {
                        self.k.map_sg_err(c, Dev::Nvme, dir, &entries);
                    }
                    let h = &mut self.hctx[cpu];
                    h.dispatch.push_front(r);
                    h.restart = true;
                    if h.inflight == 0 && !h.kblockd_pending {
                        // BLK_MQ_RESOURCE_DELAY.
                        h.kblockd_pending = true;
                        self.at(c.t + 3 * MS, Ev::Kblockd(cpu));
                    }
                    step(2 * US, Next::Done)
                }
            }
        } else {
            let entries = self.reqs[r].entries.clone();
            self.k.map_sg(c, Dev::Nvme, dir, &entries, placed);
            self.issue(r, std::mem::take(placed), task, from_dispatch, c)
        }
    }

    /// The command goes to the device; kblockd goes on with the next.
    fn issue(
        &mut self,
        r: usize,
        placed: Vec<Placed>,
        task: Task,
        from_dispatch: bool,
        c: &Ctx,
    ) -> Step {
        // The device: a fixed latency, and a transfer rate no queue depth
        // raises (so a deep queue waits in it).
        let (base, service) = match self.jobs[self.reqs[r].job].workload {
            Workload::RandRead4k => (self.us(60, 140), 2200),
            Workload::Write128k => (self.us(80, 200), (128 << 10) * 1000 / 2000),
            Workload::Read128k => (self.us(80, 200), (128 << 10) * 1000 / 3200),
        };
        let start = self.device_free.max(c.t);
        self.device_free = start + service;
        let latency = (c.t + base).max(self.device_free) - c.t + self.us(0, 15);
        self.device_inflight += 1;
        let req = &mut self.reqs[r];
        req.placed = placed;
        let cpu = req.cpu;
        self.hctx[cpu].inflight += 1;
        self.at(c.t + latency, Ev::NvmeDone(r));
        let next = if from_dispatch {
            match self.hctx[cpu].dispatch.pop_front() {
                Some(req) => Next::Then(Item::Submit {
                    req,
                    task,
                    from_dispatch: true,
                    placed: Vec::new(),
                }),
                None => Next::Done,
            }
        } else {
            Next::Done
        };
        step(US, next)
    }

    /// One completion per step: unmap, wake fio, restart the queue.
    fn nvme_irq(&mut self, cpu: usize, c: &Ctx) -> Step {
        let Some(r) = self.hctx[cpu].cq.pop_front() else {
            self.hctx[cpu].irq_pending = false;
            return step(500, Next::Done);
        };
        let placed = std::mem::take(&mut self.reqs[r].placed);
        let req = &self.reqs[r];
        let (dir, bytes) = (req.dir, req.entries.iter().map(|e| e.1).sum::<u64>());
        if req.single {
            let size = req.entries[0].1;
            self.k.release(placed[0]);
            self.k.unmap_page(c, Dev::Nvme, dir, &placed[0], size);
        } else {
            let entries = req.entries.clone();
            self.k.unmap_sg(c, Dev::Nvme, dir, &entries);
            for p in placed {
                self.k.release(p);
            }
        }
        let h = &mut self.hctx[cpu];
        h.inflight -= 1;
        if h.restart && !h.dispatch.is_empty() && !h.kblockd_pending {
            h.restart = false;
            h.kblockd_pending = true;
            let t = c.t + self.us(4, 15);
            self.at(t, Ev::Kblockd(cpu));
        }
        let j = self.reqs[r].job;
        self.jobs[j].completed.push(r);
        if !self.jobs[j].wake_pending {
            self.jobs[j].wake_pending = true;
            let t = c.t + self.us(3, 12);
            self.at(t, Ev::FioWake(j));
        }
        let copy = if dir == Dir::FromDevice {
            bytes * COPY_PS / 1000
        } else {
            0
        };
        step(US + copy, Next::Again)
    }

    /// A receive buffer: a 1536-byte piece of the queue's 32 KiB page
    /// fragment.
    fn rx_buffer(&mut self, q: usize) -> u64 {
        let (base, off) = match self.rx[q].frag {
            Some((b, o)) if o + RX_BUF <= 32 << 10 => (b, o),
            _ => (self.mem.block(&mut self.rng, 3), 0),
        };
        self.rx[q].frag = Some((base, off + RX_BUF));
        base + off
    }

    /// Adds one receive buffer if the ring has room; false when full or
    /// the map failed (then the refill work is scheduled).
    fn refill_one(&mut self, q: usize, c: &Ctx, napi: bool) -> bool {
        if self.rx[q].posted.len() >= RX_RING {
            return false;
        }
        let phys = self.rx_buffer(q);
        match self.k.bounce(c, Dev::Net, phys, RX_BUF, true) {
            Some(placed) => {
                self.k
                    .map_page(c, Dev::Net, Dir::FromDevice, Some(&placed), RX_BUF, phys);
                self.rx[q].posted.push_back(RxBuf { placed });
                true
            }
            None => {
                self.k
                    .map_page(c, Dev::Net, Dir::FromDevice, None, RX_BUF, phys);
                if napi && !self.rx[q].refill_pending {
                    self.rx[q].refill_pending = true;
                    let t = c.t + self.us(20, 80);
                    self.at(t, Ev::Refill(q));
                }
                false
            }
        }
    }

    fn packet(&mut self, t: u64, q: usize) {
        if !self.net_on {
            return;
        }
        let rx = &mut self.rx[q];
        match rx.posted.pop_front() {
            Some(b) => rx.used.push_back(b),
            None => rx.dropped += 1,
        }
        if !rx.napi_pending {
            rx.napi_pending = true;
            self.run(
                t,
                q,
                Item::RxNapi {
                    q,
                    done: 0,
                    refilling: false,
                },
            );
        }
        // The next packet: the bulk download arrives on queue 2 in bursts
        // of TCP segments, the other queues see light traffic.
        let gap = if q == 2 {
            if self.rng.random_bool(0.85) {
                self.rng.random_range(4 * US..15 * US)
            } else {
                self.us(300, 3000)
            }
        } else {
            self.us(800, 5000)
        };
        self.at(t + gap, Ev::Packet(q));
    }

    fn rx_napi(&mut self, q: usize, done: &mut usize, refilling: &mut bool, c: &Ctx) -> Step {
        if !*refilling {
            if *done < NAPI_BUDGET {
                if let Some(b) = self.rx[q].used.pop_front() {
                    *done += 1;
                    self.k.release(b.placed);
                    self.k
                        .unmap_page(c, Dev::Net, Dir::FromDevice, &b.placed, RX_BUF);
                    if q == 2 {
                        self.rx[q].unacked += 1;
                    }
                    return step(1500 + RX_BUF * COPY_PS / 1000, Next::Again);
                }
            }
            *refilling = true;
            if self.rx[q].unacked >= 2 {
                // Delayed ACKs of the bulk flow, sent from this softirq.
                self.rx[q].unacked = 0;
                let head = self.mem.block(&mut self.rng, 0) + self.rng.random_range(0..48u64) * 64;
                let skb = Skb {
                    entries: vec![(head, VNET_HDR + 66)],
                    indirect: 0,
                    mapped: Vec::new(),
                };
                self.cpus[c.cpu].irqs.push_front(Item::Xmit {
                    skb,
                    q,
                    softirq: true,
                    more: 0,
                });
            }
        }
        let free = RX_RING - self.rx[q].posted.len();
        if free > NAPI_BUDGET / 2 && self.refill_one(q, c, true) {
            return step(900, Next::Again);
        }
        self.rx[q].napi_pending = false;
        if !self.rx[q].used.is_empty() {
            self.rx[q].napi_pending = true;
            self.cpus[c.cpu].irqs.push_back(Item::RxNapi {
                q,
                done: 0,
                refilling: false,
            });
        }
        step(US, Next::Done)
    }

    /// A 64 KiB TSO packet of sshd: the headers in the skb's head (with
    /// the virtio header pushed in front), the payload in fragments of
    /// the socket's 32 KiB page fragments.
    fn gso_skb(&mut self) -> Skb {
        let head = self.mem.block(&mut self.rng, 0) + self.rng.random_range(0..32u64) * 64 + 0x40;
        let mut entries = vec![(head, VNET_HDR + 66)];
        let mut left = if self.rng.random_bool(0.8) {
            44 * 1448
        } else {
            self.rng.random_range(1..44u64) * 1448
        };
        while left > 0 {
            let (base, off) = match self.ssh_frag {
                Some((b, o)) if o < 32 << 10 => (b, o),
                _ => (self.mem.block(&mut self.rng, 3), 0),
            };
            let n = left.min((32 << 10) - off);
            entries.push((base + off, n));
            self.ssh_frag = Some((base, off + n));
            left -= n;
        }
        let indirect = self.mem.block(&mut self.rng, 0) + self.rng.random_range(0..16u64) * 256;
        Skb {
            entries,
            indirect,
            mapped: Vec::new(),
        }
    }

    /// `virtqueue_add_split`: each descriptor mapped, then the indirect
    /// table; on a failure, what was mapped is unmapped and the packet
    /// dropped. sshd's next packet follows.
    fn xmit(&mut self, skb: &mut Skb, q: usize, softirq: bool, more: usize, c: &Ctx) -> Step {
        let k = skb.mapped.len();
        let indirect = skb.entries.len() > 1;
        let (phys, len) = match skb.entries.get(k) {
            Some(&e) => e,
            None if indirect && k == skb.entries.len() => (skb.indirect, 16 * k as u64),
            None => {
                // Handed to the device. The host frees descriptors in
                // order: the indirect table first, then each buffer.
                let mut skb = std::mem::replace(
                    skb,
                    Skb {
                        entries: Vec::new(),
                        indirect: 0,
                        mapped: Vec::new(),
                    },
                );
                if indirect {
                    let table = skb.mapped.pop().expect("the table");
                    skb.mapped.insert(0, table);
                }
                let bytes: u64 = skb.entries.iter().map(|e| e.1).sum();
                let t = c.t + self.us(10, 40) + bytes / 3;
                self.tx[q].inflight.push_back(skb);
                self.at(t, Ev::TxDone(q));
                return self.next_skb(q, softirq, more);
            }
        };
        match self.k.bounce(c, Dev::Net, phys, len, true) {
            Some(p) => {
                self.k
                    .map_page(c, Dev::Net, Dir::ToDevice, Some(&p), len, phys);
                skb.mapped.push((p, len));
                step(400 + len * COPY_PS / 1000, Next::Again)
            }
            None => {
                self.k.map_page(c, Dev::Net, Dir::ToDevice, None, len, phys);
                for (p, len) in skb.mapped.drain(..) {
                    self.k.release(p);
                    self.k.unmap_page(c, Dev::Net, Dir::ToDevice, &p, len);
                }
                if self.k.net_warn.allow(c.t) {
                    self.k.log.push((
                        c.t,
                        format!("net enp0s3: Unexpected TXQ ({q}) queue failure: -12"),
                    ));
                }
                self.next_skb(q, softirq, more)
            }
        }
    }

    /// sshd copies its next 64 KiB from user space and sends it.
    fn next_skb(&mut self, q: usize, softirq: bool, more: usize) -> Step {
        if more == 0 {
            return step(2 * US, Next::Done);
        }
        let skb = self.gso_skb();
        step(
            8 * US,
            Next::Then(Item::Xmit {
                skb,
                q,
                softirq,
                more: more - 1,
            }),
        )
    }

    /// `free_old_xmit`: per step, one descriptor of the oldest sent
    /// packet unmapped.
    fn tx_napi(&mut self, q: usize, c: &Ctx) -> Step {
        let Some(skb) = self.tx[q].done.front_mut() else {
            self.tx[q].napi_pending = false;
            return step(US, Next::Done);
        };
        let (p, len) = skb.mapped.remove(0);
        let empty = skb.mapped.is_empty();
        self.k.release(p);
        self.k.unmap_page(c, Dev::Net, Dir::ToDevice, &p, len);
        if empty {
            self.tx[q].done.pop_front();
        }
        step(700, Next::Again)
    }
}

/// The boot lines of the log, then the run's.
fn dmesg(log: &[(u64, String)]) -> String {
    let boot: &[(u64, &str)] = &[
        (0, "Linux version 6.13.7 (builder@buildhost) (gcc (GCC) 14.2.1 20250110, GNU ld version 2.43.1-5) #1 SMP PREEMPT_DYNAMIC Fri Mar 14 10:22:41 UTC 2025"),
        (0, "Command line: BOOT_IMAGE=(hd0,gpt2)/vmlinuz-6.13.7 root=UUID=4b1f0e6c-93d2-4a4e-9c07-5a2d1f6e8b31 ro console=ttyS0,115200 swiotlb=16384"),
        (0, "BIOS-provided physical RAM map:"),
        (0, "Hypervisor detected: KVM"),
        (0, "Memory Encryption Features active: AMD SEV"),
        (0, "SEV: Status: SEV"),
        (46_125, "smpboot: Allowing 4 CPUs, 0 hotplug CPUs"),
        (118_734, "Memory: 8046112K/8388088K available (18432K kernel code, 3310K rwdata, 12876K rodata, 4644K init, 5316K bss, 341720K reserved, 0K cma-reserved)"),
        (121_509, "software IO TLB: area num 4."),
        (121_998, "software IO TLB: mapped [mem 0x00000000bde00000-0x00000000bfdfffff] (32MB)"),
        (412_871, "smp: Brought up 1 node, 4 CPUs"),
        (1_402_664, "nvme nvme0: pci function 0000:00:04.0"),
        (1_431_208, "virtio_net virtio0 enp0s3: renamed from eth0"),
        (1_488_302, "nvme nvme0: 4/0/0 default/read/poll queues"),
        (1_491_007, " nvme0n1: p1"),
        (4_907_412, "EXT4-fs (nvme0n1p1): mounted filesystem 8a1c5e02-77b4-4c1e-a0d6-2f9e3b71c4d8 r/w with ordered data mode. Quota mode: none."),
    ];
    let mut s = String::new();
    for (us, text) in boot {
        let _ = writeln!(s, "[{:>5}.{:06}] {text}", us / 1_000_000, us % 1_000_000);
    }
    for (t, text) in log {
        let _ = writeln!(s, "[{:>5}.{:06}] {text}", t / SEC, t % SEC / US);
    }
    s
}

fn header(entries: u64) -> String {
    format!(
        "# tracer: nop
#
# entries-in-buffer/entries-written: {entries}/{entries}   #P:{NCPU}
#
#                                _-----=> irqs-off/BH-disabled
#                               / _----=> need-resched
#                              | / _---=> hardirq/softirq
#                              || / _--=> preempt-depth
#                              ||| / _-=> migrate-disable
#                              |||| /     delay
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |
"
    )
}

/// The two files of the sample, as text, and a summary of the run.
pub struct Sample {
    /// The ftrace `trace` file, header included.
    pub trace: String,
    /// The kernel log.
    pub dmesg: String,
    /// What the run did, for whoever regenerates it.
    pub summary: String,
}

/// Runs the model.
pub fn generate() -> Sample {
    let mut sim = Sim::new();
    // The link comes up from `ip` on CPU 0: every receive ring filled.
    sim.run(T_START, 0, Item::LinkUp { q: 0 });
    sim.net_on = true;
    for q in 0..NCPU {
        let t = T_START + 25 * MS + q as u64 * 311 * US;
        sim.at(t, Ev::Packet(q));
    }
    sim.at(T_START + 27 * MS, Ev::SshSend);
    sim.at(T_START + 60 * MS, Ev::Phase(0));
    sim.main_loop();

    let mut summary = format!(
        "{} events; {} maps, {} failed ({} NVMe); {} log lines after boot\n",
        sim.k.events,
        sim.k.maps,
        sim.k.failures,
        sim.k.failures_nvme,
        sim.k.log.len()
    );
    let _ = writeln!(
        summary,
        "  peak {} slots before the first marker",
        sim.phase_peak[0]
    );
    for (i, (t, m)) in sim.marks.iter().enumerate() {
        let _ = writeln!(
            summary,
            "  {:>5}.{:06} {m}: peak {} slots until the next marker",
            t / SEC,
            t % SEC / US,
            sim.phase_peak.get(i + 1).copied().unwrap_or(0)
        );
    }
    let dropped: u64 = sim.rx.iter().map(|r| r.dropped).sum();
    let _ = writeln!(
        summary,
        "  {dropped} packets dropped for want of a receive buffer"
    );
    let mut trace = header(sim.k.events);
    trace.push_str(&sim.k.trace);
    Sample {
        trace,
        dmesg: dmesg(&sim.k.log),
        summary,
    }
}

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("samples"));
    let sample = generate();
    // No time and no file name in the header: the same bytes every run.
    let mut gz = GzBuilder::new()
        .mtime(0)
        .operating_system(3)
        .write(Vec::new(), Compression::best());
    gz.write_all(sample.trace.as_bytes())?;
    let gz = gz.finish()?;
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("sev-nvme.trace.gz"), &gz)?;
    std::fs::write(dir.join("sev-nvme.dmesg"), &sample.dmesg)?;
    eprint!("{}", sample.summary);
    eprintln!("  sev-nvme.trace.gz: {} bytes", gz.len());
    Ok(())
}
