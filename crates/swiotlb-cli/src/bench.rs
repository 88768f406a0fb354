//! `swiotlb bench`: the fast policy, Linux's next-fit policy and a plain
//! memcpy of the same bytes, measured in one process.
//!
//! Every comparison is made inside one run and interleaved (see
//! [`timing`]), because the question is always relative: is the fast
//! policy faster than Linux's, and how far is a bounce from the copy it
//! cannot avoid? Numbers from separate runs on a shared machine drift by
//! more than the differences being asked about.

mod dt;
mod lookup;
mod report;
mod timing;
mod trace;
mod workload;

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use swiotlb::pool::Request;
use swiotlb::{
    Device, Direction, DmaMask, Fast, IoTlb, NextFit, PhysAddr, Policy, Pool, PoolConfig, TlbKind,
};

use crate::error::Error;
use crate::rng::seeded;
use crate::units::human;
use report::Row;
use timing::{interleave, Contender, Run, Sampling};
use workload::{fill_to, first_failure, prefault, slot_fill, Mix, FRAG_STEPS};

/// Arguments of `swiotlb bench`.
///
/// Rows: `map_unmap` (ns per map+unmap pair; `dir` `to` copies once,
/// `from` twice, as Linux does), `map_unmap_iotlb` (the same through a
/// fixed one-pool `IoTlb`, timed interleaved with the bare pool's),
/// `map_unmap_zero_on_free` (the same through a pool that zeroes every
/// freed slot, `PoolConfig::zero_on_free`, timed interleaved with the
/// plain pool's at 64 B, 512 B, 4 KiB and 64 KiB), `memcpy` (ns per copy of the same bytes;
/// `dir` `hot` into one buffer, `walk` through a pool-sized region),
/// `alloc_free` (ns per allocate+free of one slot by the allocator alone,
/// at a pool `fill`: the policy's search and bookkeeping under the area
/// lock, one lock hold per pair, no record and no copy),
/// `alloc_free_batch` (the same with one lock hold per 64 pairs: the
/// policy's own cost), `alloc_free_alt` (one and two slots in turn, so that
/// no allocation fits the run freed last: the search), `map_unmap_1b` (ns per map+unmap of 1 byte at the
/// same fill: the whole path around the same allocation),
/// `throughput` (million map+unmap pairs per second over all threads;
/// policy `memcpy` is as many plain copies, sharing nothing, to show how
/// far this machine scales at all),
/// `fill_at_first_failure` and `slots_at_first_failure` (live bytes and
/// held slots over the pool's at the first "buffer is full" of the
/// fragmentation protocol: a 64 MiB pool of 2 areas, N live mappings of
/// 512 B-64 KiB replaced at random for 200,000 steps, the smallest failing
/// N found by bisection; `_uniform`: the same with sizes uniform in bytes),
/// `metadata_per_slot` (bytes), `init_6gib` (ms to build a 6 GiB pool),
/// `init_6gib_resident` (MiB of memory that build touched) and `dt_parse`
/// (ms to read the DMA pools of a device tree blob of `size` bytes with
/// `pools` pools and `devices` devices). `size` is 0
/// where a row mixes sizes, `dir` is `none` where it has no direction.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Fewer repetitions and fragmentation steps (the fragmentation rows
    /// say so): the whole run takes well under a minute.
    #[arg(long)]
    quick: bool,
    /// Print `{"rows": [...]}` (and the ratios) as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Shrink every part to a token run (small pools, a few short samples),
    /// to check the command itself in seconds even unoptimised; the
    /// numbers mean nothing.
    #[arg(long)]
    smoke: bool,
    /// Run only these parts.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
    /// Rounds of each interleaved measurement; the median is reported.
    #[arg(long)]
    reps: Option<usize>,
    /// Replacement steps of each fragmentation trial: 200,000 by default,
    /// as the protocol says; 50,000 with --quick. Rows run with other than
    /// 200,000 say so.
    #[arg(long)]
    steps: Option<u64>,
    /// Seed of the random sizes and choices.
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,
    /// Slots per segment in the fragmentation pools: a power of two up to
    /// 4096 (8 MiB of 2 KiB slots); 128, Linux's `IO_TLB_SEGSIZE`, by
    /// default. No run crosses a segment line, so a larger segment lets
    /// runs reach further, which only a pool that is physically contiguous
    /// as a whole allows (`PoolConfig::segment`).
    #[arg(long, default_value_t = swiotlb::config::IO_TLB_SEGSIZE, value_parser = segment_slots)]
    segment: u32,
    /// Areas of the fragmentation pools: 2 by default, as the protocol
    /// says. Every map comes from one CPU, so the search starts in one area
    /// and falls back to the others. Rows run with other than 2 say so.
    #[arg(long, default_value_t = workload::FRAG_AREAS,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    areas: u32,
}

/// Parses `--segment`: a power of two whose segment of 2 KiB slots is at
/// most the 8 MiB `PoolConfig` takes, so from 1 to 4096 slots.
fn segment_slots(s: &str) -> Result<u32, Error> {
    const MAX: u32 = 4096;
    let n: u32 = s.parse().map_err(Error::NotANumber)?;
    if n.is_power_of_two() && n <= MAX {
        Ok(n)
    } else {
        Err(Error::NotPowerOfTwo { value: n, max: MAX })
    }
}

/// The parts of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// `map_unmap` and `memcpy` rows.
    Map,
    /// `alloc_free`, `alloc_free_batch`, `alloc_free_alt` (allocator
    /// alone) and `map_unmap_1b` at 10, 50 and 90 % fill.
    Alloc,
    /// `throughput` with one and two threads.
    Threads,
    /// `fill_at_first_failure` and `slots_at_first_failure`, both mixes:
    /// the fragmentation protocol.
    Frag,
    /// `metadata_per_slot`.
    Metadata,
    /// `init_6gib`.
    Init,
    /// `lookup` and `map_unmap_pools`: a growing tlb of 1, 100 and 10,000
    /// pools; `grow`: the time to add a 4 MiB pool.
    Lookup,
    /// `dt_parse`: ms to read the pools of a 3 MiB device tree blob.
    Dt,
    /// `trace_split`, `trace_parse`, `trace_replay`: ns per line of the
    /// sample kernel trace.
    Trace,
}

/// Mapping sizes of the map+unmap rows: a small control message, a small
/// packet, an Ethernet frame, a page, a large I/O, the largest mapping
/// Linux allows.
const SIZES: [usize; 6] = [64, 512, 1500, 4096, 64 << 10, 256 << 10];
/// Sizes of the `map_unmap_zero_on_free` rows.
pub(crate) const ZERO_SIZES: [usize; 4] = [64, 512, 4096, 64 << 10];
/// Pool fills of the allocator rows.
const FILLS: [f64; 3] = [0.1, 0.5, 0.9];
/// Sizes of the thread rows.
const THREAD_SIZES: [usize; 2] = [64, 4096];
/// Linux's default pool size.
const POOL_BYTES: usize = 64 << 20;
/// Replacement steps of a fragmentation trial with `--quick`: a quarter
/// of the protocol's, to keep the quick run under a minute.
const QUICK_FRAG_STEPS: u64 = 50_000;
/// The pool whose set-up time is measured: 3,145,728 slots of 2 KiB.
const INIT_BYTES: usize = 6 << 30;

/// How much of everything to do.
struct Plan {
    sampling: Sampling,
    /// Thread rows spawn threads per sample, so samples are longer.
    thread_sampling: Sampling,
    pool_bytes: usize,
    frag_steps: u64,
    /// Why `frag_steps` is not the protocol's, if it is not.
    frag_steps_why: Option<&'static str>,
    /// Areas of the fragmentation pools.
    frag_areas: u32,
    init_samples: usize,
    seed: u64,
    /// Slots per segment of the fragmentation pools.
    segment: u32,
}

impl Plan {
    fn new(a: &Args) -> Self {
        // Many short samples rather than a few long ones: on a shared
        // machine a preemption spoils one sample, and the median drops it.
        let ms = Duration::from_millis;
        let (reps, target, thread_reps, thread_target, pool_bytes, steps, init) = if a.smoke {
            (
                3,
                Duration::from_micros(20),
                3,
                Duration::from_micros(200),
                4 << 20,
                1_000,
                1,
            )
        } else if a.quick {
            (31, ms(1), 15, ms(4), POOL_BYTES, QUICK_FRAG_STEPS, 5)
        } else {
            (61, ms(2), 31, ms(10), POOL_BYTES, FRAG_STEPS, 11)
        };
        let frag_steps = a.steps.unwrap_or(steps);
        let frag_steps_why = if frag_steps == FRAG_STEPS {
            None
        } else if a.steps.is_some() {
            Some("--steps")
        } else if a.smoke {
            Some("--smoke")
        } else {
            Some("--quick")
        };
        Self {
            sampling: Sampling {
                reps: a.reps.unwrap_or(reps).max(1),
                target,
            },
            thread_sampling: Sampling {
                reps: a.reps.unwrap_or(thread_reps).max(1),
                target: thread_target,
            },
            pool_bytes,
            frag_steps,
            frag_steps_why,
            frag_areas: a.areas,
            init_samples: init,
            seed: a.seed,
            segment: a.segment,
        }
    }
}

/// The one-minute load average, where the system says (Linux's `/proc`).
fn load_average() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Runs `swiotlb bench`.
pub(crate) fn run(args: &Args) -> Result<(), Error> {
    let optimized = !cfg!(debug_assertions);
    if !optimized {
        eprintln!(
            "warning: swiotlb was built without optimisations; these numbers mean nothing \
             (build with --release)"
        );
    }
    // Other work on the machine takes CPU time from some samples and, worse,
    // takes the second core the two-thread rows need: say so up front.
    let load = load_average();
    if let Some(l) = load.filter(|&l| l >= 0.5) {
        eprintln!(
            "warning: the machine is busy (load average {l:.2}); timings will be noisy \
             and two threads may not get two cores"
        );
    }
    let plan = Plan::new(args);
    let want = |p: Part| args.only.is_empty() || args.only.contains(&p);
    let mut rows = Vec::new();
    if want(Part::Map) {
        progress("map+unmap and memcpy, 6 sizes");
        map_part(&plan, &mut rows)?;
    }
    if want(Part::Alloc) {
        progress("allocator at 10, 50, 90 % fill");
        alloc_part(&plan, &mut rows)?;
    }
    if want(Part::Threads) {
        progress("one and two threads");
        thread_part(&plan, &mut rows)?;
    }
    if want(Part::Frag) {
        progress(&format!(
            "fragmentation, {} steps per trial",
            thousands(plan.frag_steps)
        ));
        frag_part(&plan, &mut rows)?;
    }
    if want(Part::Metadata) {
        metadata_part(&plan, &mut rows)?;
    }
    if want(Part::Init) {
        progress("6 GiB pool set-up");
        init_part(&plan, &mut rows);
    }
    if want(Part::Lookup) {
        progress("unmap lookup with 1, 100, 10,000 pools");
        // Growth first: the lookup rows free 10,000 small pools, after
        // which the C allocator serves large blocks from its heap (zeroing
        // them) instead of fresh pages.
        lookup::grow_part(&mut rows)?;
        lookup::lookup_part(plan.sampling, plan.seed, &mut rows)?;
    }
    if want(Part::Dt) {
        progress("device tree parse, 3 MiB blobs");
        dt::dt_part(plan.sampling, args.smoke, &mut rows)?;
    }
    if want(Part::Trace) {
        progress("kernel trace: split, parse, replay");
        trace::trace_part(plan.sampling, &mut rows)?;
    }
    let sizes: Vec<u64> = SIZES.iter().map(|&s| s as u64).collect();
    let ratios = report::ratios(&rows, &sizes, &FILLS);
    if args.json {
        println!("{}", report::json(&rows, &ratios, optimized, load)?);
    } else {
        print!("{}", report::table(&rows, &ratios));
        if let Some(l) = load {
            println!("\nload average at start: {l:.2}");
        }
    }
    Ok(())
}

fn progress(what: &str) {
    eprintln!("swiotlb bench: {what}...");
}

/// A device that bounces everything, as in a confidential VM: every map
/// goes through the pool.
fn forced() -> Device {
    Device::new(DmaMask::BITS_64).with_force_bounce()
}

fn heap<P: Policy>(bytes: usize, nareas: u32) -> Result<Pool<P>, Error> {
    heap_with(bytes, PoolConfig::with_areas(nareas))
}

/// [`heap`] with any geometry.
fn heap_with<P: Policy>(bytes: usize, config: PoolConfig) -> Result<Pool<P>, Error> {
    Pool::<P>::new_heap(bytes, config).map_err(|e| {
        Error::core(
            format!("cannot build a {} pool of {}", P::NAME, human(bytes as u64)),
            e,
        )
    })
}

/// One map+unmap pair through the safe API; the buffer comes back, so the
/// loop allocates nothing.
#[inline]
fn map_once<P: Policy>(
    pool: &Pool<P>,
    dev: &Device,
    buf: Buf,
    dir: Direction,
) -> Result<Buf, Error> {
    match pool.map(dev, black_box(buf), dir) {
        Ok(m) => Ok(black_box(m.unmap())),
        Err(f) => Err(Error::core(
            format!("{} pool, {} bytes", P::NAME, f.buffer.len()),
            f.error,
        )),
    }
}

/// A timed original buffer.
type Buf = &'static mut [u8];

const PAGE: usize = 4096;

/// A page-aligned original of `size` bytes.
///
/// Where an original sits within its page changes the copy's speed by up
/// to two times on x86: when the destination lies just above the source
/// modulo 4 KiB, loads falsely wait on earlier stores ("4K aliasing"), and
/// slots are page aligned. Heap buffers land wherever the allocator puts
/// them, which differs from run to run, so every timed copy, bounce and
/// yardstick alike, starts from a page-aligned original: page-cache I/O
/// looks like that, and runs compare. Owning such a buffer safely means
/// carving it out of a larger allocation that lives for the whole process;
/// the benchmark makes a few dozen, once.
fn page_buf(size: usize) -> Buf {
    let raw: Buf = Box::leak(vec![0x5au8; size + PAGE].into_boxed_slice());
    let at = page_offset(raw);
    &mut raw[at..at + size]
}

/// The offset in `buf` of its first page-aligned byte.
fn page_offset(buf: &[u8]) -> usize {
    (PAGE - buf.as_ptr() as usize % PAGE) % PAGE
}

/// Map+unmap pairs of one buffer of `size` bytes.
fn map_unmap<'a, P: Policy>(
    pool: &'a Pool<P>,
    dev: &'a Device,
    size: usize,
    dir: Direction,
) -> Run<'a> {
    let mut keep = page_buf(size);
    Box::new(move |n| {
        let mut buf = std::mem::take(&mut keep);
        let t = Instant::now();
        for _ in 0..n {
            buf = map_once(pool, dev, buf, dir)?;
        }
        let e = t.elapsed();
        keep = buf;
        Ok(e)
    })
}

/// Map+unmap pairs of one buffer of `size` bytes through a tlb: the same
/// work as [`map_unmap`] through its one pool, plus whatever the tlb adds.
fn map_unmap_tlb<'a>(tlb: &'a IoTlb, dev: &'a Device, size: usize, dir: Direction) -> Run<'a> {
    let mut keep = page_buf(size);
    Box::new(move |n| {
        let mut buf = std::mem::take(&mut keep);
        let t = Instant::now();
        for _ in 0..n {
            buf = match tlb.map(dev, black_box(buf), dir) {
                Ok(m) => black_box(m.unmap()),
                Err(f) => return Err(Error::core(format!("one-pool tlb, {size} bytes"), f.error)),
            };
        }
        let e = t.elapsed();
        keep = buf;
        Ok(e)
    })
}

/// The copy alone, into one destination that stays in cache: the floor a
/// bounce that reuses warm slots can approach. Source and destination are
/// page aligned, as an original (see `page_buf`) and a slot are.
fn memcpy_hot<'a>(size: usize) -> Run<'a> {
    let src = page_buf(size);
    let dst = page_buf(size);
    Box::new(move |n| {
        let t = Instant::now();
        for _ in 0..n {
            black_box(&mut *dst).copy_from_slice(black_box(&*src));
        }
        let e = t.elapsed();
        black_box(&*dst);
        Ok(e)
    })
}

/// The copy alone, its destination advancing through a pool-sized region
/// by whole slots, as a bounce pool that walks its slots would: the floor
/// when the slots are cold.
fn memcpy_walk(region: &mut [u8], size: usize, slot: usize) -> Run<'_> {
    let src = page_buf(size);
    let step = size.div_ceil(slot) * slot;
    // Slots, and so this walk, start page aligned (see `page_offset`).
    let at = page_offset(region);
    let region = &mut region[at..];
    let mut off = 0;
    Box::new(move |n| {
        let t = Instant::now();
        for _ in 0..n {
            if off + size > region.len() {
                off = 0;
            }
            black_box(&mut region[off..off + size]).copy_from_slice(black_box(&*src));
            off += step;
        }
        let e = t.elapsed();
        black_box(&region[..]);
        Ok(e)
    })
}

fn dir_name(d: Direction) -> &'static str {
    match d {
        Direction::ToDevice => "to",
        Direction::FromDevice => "from",
        _ => "bidi",
    }
}

fn map_part(plan: &Plan, rows: &mut Vec<Row>) -> Result<(), Error> {
    let dev = forced();
    let fast = heap::<Fast>(plan.pool_bytes, 1)?;
    let next = heap::<NextFit>(plan.pool_bytes, 1)?;
    // A fixed tlb over a pool like `fast`'s: what the tlb adds to a bare
    // pool (its target is nothing).
    let tlb = IoTlb::new(TlbKind::Default, heap::<Fast>(plan.pool_bytes, 1)?);
    // A pool like `fast`'s that zeroes every slot it frees: the price of
    // the promise that nothing of a finished mapping stays in the pool.
    let zeroing = heap_with::<Fast>(
        plan.pool_bytes,
        PoolConfig::with_areas(1).with_zero_on_free(true),
    )?;
    prefault(&fast, &dev)?;
    prefault(&zeroing, &dev)?;
    prefault(&next, &dev)?;
    prefault(tlb.first_pool(), &dev)?;
    // Filled with non-zero bytes so every page is really there before the
    // walk is timed; a page more, to start it page aligned.
    let mut region = vec![1u8; plan.pool_bytes + PAGE];
    let slot = fast.slot_size();
    for size in SIZES {
        let dirs = [Direction::ToDevice, Direction::FromDevice];
        let mut labels = Vec::new();
        let mut cs = Vec::new();
        for d in dirs {
            cs.push(Contender::new(map_unmap(&fast, &dev, size, d)));
            labels.push(("map_unmap", Fast::NAME, dir_name(d)));
            cs.push(Contender::new(map_unmap(&next, &dev, size, d)));
            labels.push(("map_unmap", NextFit::NAME, dir_name(d)));
        }
        cs.push(Contender::new(map_unmap_tlb(
            &tlb,
            &dev,
            size,
            Direction::ToDevice,
        )));
        labels.push(("map_unmap_iotlb", Fast::NAME, "to"));
        if ZERO_SIZES.contains(&size) {
            cs.push(Contender::new(map_unmap(
                &zeroing,
                &dev,
                size,
                Direction::ToDevice,
            )));
            labels.push(("map_unmap_zero_on_free", Fast::NAME, "to"));
        }
        cs.push(Contender::new(memcpy_hot(size)));
        labels.push(("memcpy", "memcpy", "hot"));
        cs.push(Contender::new(memcpy_walk(&mut region, size, slot)));
        labels.push(("memcpy", "memcpy", "walk"));
        let res = interleave(&mut cs, plan.sampling)?;
        for ((name, policy, dir), s) in labels.into_iter().zip(res) {
            rows.push(Row::new(name, policy, size as u64, dir, s.median, "ns").spread(s.spread));
        }
    }
    Ok(())
}

/// How many allocate+free pairs share one hold of the area lock in the
/// `alloc_free_batch` rows: enough to spread the lock's atomic over them.
const ALLOC_BATCH: u64 = 64;

/// Allocate+free pairs of the allocator alone: the policy's search and
/// slot bookkeeping for `req` and the free after it, under the area lock
/// ([`Pool::alloc_free_n`]), taken once per `batch` pairs; no record, no
/// pool-wide counter, no copy. The request is built once, as it is a pure
/// function of the device, the original's address and the size.
fn alloc_free<P: Policy>(pool: &Pool<P>, req: Request, batch: u64) -> Run<'_> {
    Box::new(move |n| {
        let t = Instant::now();
        let mut left = n;
        while left > 0 {
            let k = left.min(batch);
            left -= k;
            if black_box(pool.alloc_free_n(black_box(&req), 0, k)).is_none() {
                return Err(Error::Bench(format!(
                    "{} pool: no room for {} slots",
                    P::NAME,
                    req.nslots
                )));
            }
        }
        Ok(t.elapsed())
    })
}

/// Allocate+free pairs alternating between two requests of different
/// sizes, a lock hold per pair: the run freed last never fits the next
/// request exactly, so every allocation searches.
fn alloc_free_alt<P: Policy>(pool: &Pool<P>, reqs: [Request; 2]) -> Run<'_> {
    Box::new(move |n| {
        let t = Instant::now();
        for i in 0..n {
            let req = &reqs[(i & 1) as usize];
            if black_box(pool.alloc_free_n(black_box(req), 0, 1)).is_none() {
                return Err(Error::Bench(format!(
                    "{} pool: no room for {} slots",
                    P::NAME,
                    req.nslots
                )));
            }
        }
        Ok(t.elapsed())
    })
}

/// The second size of the `alloc_free_alt` rows: two 2 KiB slots, below a
/// page so that no page alignment is asked for.
const ALT_BYTES: usize = 3000;

fn alloc_part(plan: &Plan, rows: &mut Vec<Row>) -> Result<(), Error> {
    let dev = forced();
    // A one-byte, page-aligned original: one slot, as the smallest map.
    let orig = PhysAddr(page_buf(1).as_ptr() as usize as u64);
    for fill in FILLS {
        let fast = heap::<Fast>(plan.pool_bytes, 1)?;
        let next = heap::<NextFit>(plan.pool_bytes, 1)?;
        prefault(&fast, &dev)?;
        prefault(&next, &dev)?;
        // The same seed: both policies see the same sequence of sizes and
        // choices (their placements, and so their holes, differ).
        let live_fast = fill_to(&fast, &dev, fill, &mut seeded(plan.seed))?;
        let live_next = fill_to(&next, &dev, fill, &mut seeded(plan.seed))?;
        let held = [slot_fill(&fast), slot_fill(&next)];
        let req_fast = fast.alloc_request(&dev, orig, 1)?;
        let req_next = next.alloc_request(&dev, orig, 1)?;
        let alt_fast = [req_fast, fast.alloc_request(&dev, orig, ALT_BYTES)?];
        let alt_next = [req_next, next.alloc_request(&dev, orig, ALT_BYTES)?];
        // The allocator alone, and for scale the whole path of the same
        // request: a one-byte to-device map+unmap (records, the pool-wide
        // use counter, two lock holds and a one-byte copy on top).
        let labels = [
            ("alloc_free", Fast::NAME),
            ("alloc_free", NextFit::NAME),
            ("alloc_free_batch", Fast::NAME),
            ("alloc_free_batch", NextFit::NAME),
            ("alloc_free_alt", Fast::NAME),
            ("alloc_free_alt", NextFit::NAME),
            ("map_unmap_1b", Fast::NAME),
            ("map_unmap_1b", NextFit::NAME),
        ];
        let mut cs = vec![
            Contender::new(alloc_free(&fast, req_fast, 1)),
            Contender::new(alloc_free(&next, req_next, 1)),
            Contender::new(alloc_free(&fast, req_fast, ALLOC_BATCH)),
            Contender::new(alloc_free(&next, req_next, ALLOC_BATCH)),
            Contender::new(alloc_free_alt(&fast, alt_fast)),
            Contender::new(alloc_free_alt(&next, alt_next)),
            Contender::new(map_unmap(&fast, &dev, 1, Direction::ToDevice)),
            Contender::new(map_unmap(&next, &dev, 1, Direction::ToDevice)),
        ];
        let res = interleave(&mut cs, plan.sampling)?;
        drop(cs);
        for ((name, policy), s) in labels.into_iter().zip(res) {
            let h = if policy == Fast::NAME {
                held[0]
            } else {
                held[1]
            };
            let what = match name {
                "alloc_free" => "allocator alone, 1 slot, a lock hold per pair".to_string(),
                "alloc_free_batch" => {
                    format!("allocator alone, 1 slot, a lock hold per {ALLOC_BATCH} pairs")
                }
                "alloc_free_alt" => format!(
                    "allocator alone, 1 and {} slots in turn (every allocation \
                     searches), a lock hold per pair",
                    ALT_BYTES.div_ceil(fast.slot_size())
                ),
                _ => "map+unmap of 1 B".to_string(),
            };
            let size = if name == "alloc_free_alt" { 0 } else { 1 };
            rows.push(
                Row::new(name, policy, size, "to", s.median, "ns")
                    .fill(fill)
                    .spread(s.spread)
                    .note(format!("{what}; {:.1}% of slots held", h * 100.0)),
            );
        }
        drop((live_fast, live_next));
    }
    Ok(())
}

/// `threads` threads each applying `op` `n` times to its own buffer, all
/// released together; the time is the slowest thread's, so the rate is
/// what they sustain with all of them running.
fn parallel<'a, F>(threads: usize, size: usize, op: F) -> Run<'a>
where
    F: Fn(Buf) -> Result<Buf, Error> + Sync + 'a,
{
    let mut bufs: Vec<Buf> = (0..threads).map(|_| page_buf(size)).collect();
    Box::new(move |n| {
        let barrier = Barrier::new(threads);
        let op = &op;
        std::thread::scope(|s| {
            let handles: Vec<_> = bufs
                .iter_mut()
                .map(|keep| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        let mut buf = std::mem::take(keep);
                        barrier.wait();
                        let t = Instant::now();
                        for _ in 0..n {
                            buf = op(buf)?;
                        }
                        let e = t.elapsed();
                        *keep = buf;
                        Ok::<_, Error>(e)
                    })
                })
                .collect();
            let mut slowest = Duration::ZERO;
            for h in handles {
                let e = h
                    .join()
                    .map_err(|_| Error::Bench("a benchmark thread panicked".into()))??;
                slowest = slowest.max(e);
            }
            Ok(slowest)
        })
    })
}

/// Map+unmap pairs on `threads` threads sharing one pool.
fn parallel_map<'a, P: Policy>(
    pool: &'a Pool<P>,
    dev: &'a Device,
    size: usize,
    threads: usize,
) -> Run<'a> {
    // Each new thread takes the next area hint on its first map (the
    // `ThreadHint` that `main` installs), so two threads start in two
    // areas: one stream per area, as one CPU per area in Linux.
    parallel(threads, size, move |b| {
        map_once(pool, dev, b, Direction::ToDevice)
    })
}

/// The same number of copies of the same size, sharing nothing: how much
/// a second thread can add on this machine at all (a virtual machine's
/// CPUs may share one core), the yardstick for the pool's own scaling.
fn parallel_memcpy<'a>(size: usize, threads: usize) -> Run<'a> {
    parallel(threads, 2 * size, move |b| {
        let (src, dst) = b.split_at_mut(size);
        black_box(dst).copy_from_slice(black_box(&*src));
        Ok(b)
    })
}

fn thread_part(plan: &Plan, rows: &mut Vec<Row>) -> Result<(), Error> {
    let dev = forced();
    let fast = heap::<Fast>(plan.pool_bytes, 2)?;
    let next = heap::<NextFit>(plan.pool_bytes, 2)?;
    // The same pool keeping Linux's exact pool-wide high-water mark: one
    // counter shared by both threads (`Pool::with_hiwater(Hiwater::Exact)`).
    let marks = heap::<Fast>(plan.pool_bytes, 2)?.with_hiwater(swiotlb::Hiwater::Exact);
    prefault(&fast, &dev)?;
    prefault(&next, &dev)?;
    prefault(&marks, &dev)?;
    for size in THREAD_SIZES {
        let mut labels = Vec::new();
        let mut cs = Vec::new();
        for threads in [1u32, 2] {
            let t = threads as usize;
            cs.push(Contender::new(parallel_map(&fast, &dev, size, t)));
            labels.push((Fast::NAME, threads));
            cs.push(Contender::new(parallel_map(&next, &dev, size, t)));
            labels.push((NextFit::NAME, threads));
            cs.push(Contender::new(parallel_memcpy(size, t)));
            labels.push(("memcpy", threads));
            cs.push(Contender::new(parallel_map(&marks, &dev, size, t)));
            labels.push(("exact_hiwater", threads));
        }
        let res = interleave(&mut cs, plan.thread_sampling)?;
        for ((policy, threads), s) in labels.into_iter().zip(res) {
            // `ns` is per pair per thread; all threads run at once.
            let mops = threads as f64 * 1e3 / s.median;
            let (name, policy, dir, note) = match policy {
                "memcpy" => (
                    "throughput",
                    policy,
                    "hot",
                    "copies alone, nothing shared".to_string(),
                ),
                "exact_hiwater" => (
                    "throughput_exact_hiwater",
                    Fast::NAME,
                    "to",
                    format!(
                        "one pool of {} areas, exact pool-wide high-water mark (with_hiwater(Hiwater::Exact))",
                        fast.nareas()
                    ),
                ),
                _ => (
                    "throughput",
                    policy,
                    "to",
                    format!("one pool of {} areas", fast.nareas()),
                ),
            };
            rows.push(
                Row::new(name, policy, size as u64, dir, mops, "Mops")
                    .threads(threads)
                    .spread(s.spread)
                    .note(note),
            );
        }
    }
    Ok(())
}

/// `n` with a comma between groups of three digits.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The fragmentation rows: the protocol of `workload::first_failure`, once
/// per size mix, for both policies.
fn frag_part(plan: &Plan, rows: &mut Vec<Row>) -> Result<(), Error> {
    let bytes = plan.pool_bytes;
    let config = PoolConfig::with_areas(plan.frag_areas).with_segment(plan.segment);
    let areas = heap_with::<Fast>(bytes, config)?.nareas();
    let geometry = if plan.segment == swiotlb::config::IO_TLB_SEGSIZE {
        String::new()
    } else {
        format!(", segments of {} slots", plan.segment)
    };
    let steps = match plan.frag_steps_why {
        None => format!("{} steps", thousands(plan.frag_steps)),
        Some(why) => format!(
            "{} steps ({why}; the protocol runs {})",
            thousands(plan.frag_steps),
            thousands(FRAG_STEPS)
        ),
    };
    // The log-uniform mix (most mappings small), then one uniform in
    // bytes (most mappings large).
    for (mix, what, fill_name, slots_name) in [
        (
            Mix::LogUniform,
            "log-uniform",
            "fill_at_first_failure",
            "slots_at_first_failure",
        ),
        (
            Mix::Uniform,
            "uniform",
            "fill_at_first_failure_uniform",
            "slots_at_first_failure_uniform",
        ),
    ] {
        let runs: [(&'static str, workload::FirstFailure); 2] = [
            (
                Fast::NAME,
                first_failure(
                    &|| heap_with::<Fast>(bytes, config),
                    plan.frag_steps,
                    plan.seed,
                    mix,
                )?,
            ),
            (
                NextFit::NAME,
                first_failure(
                    &|| heap_with::<NextFit>(bytes, config),
                    plan.frag_steps,
                    plan.seed,
                    mix,
                )?,
            ),
        ];
        for (policy, f) in runs {
            let when = match f.step {
                Some(s) => format!("at step {}", thousands(s + 1)),
                None => "while filling".into(),
            };
            let note = format!(
                "{} pool of {areas} area{}{geometry}, one CPU; N live mappings of \
                 512 B-64 KiB ({what}) replaced at random for {steps}; smallest \
                 failing N by bisection: {}, failing {when}; {} trials",
                human(bytes as u64),
                if areas == 1 { "" } else { "s" },
                f.n,
                f.trials
            );
            rows.push(Row::new(fill_name, policy, 0, "none", f.bytes, "ratio").note(note.clone()));
            rows.push(Row::new(slots_name, policy, 0, "none", f.slots, "ratio").note(note));
        }
    }
    Ok(())
}

fn metadata_part(plan: &Plan, rows: &mut Vec<Row>) -> Result<(), Error> {
    fn one<P: Policy>(bytes: usize, rows: &mut Vec<Row>) -> Result<(), Error> {
        let pool = heap::<P>(bytes, 1)?;
        let per = pool.metadata_bytes() as f64 / pool.nslabs() as f64;
        rows.push(
            Row::new(
                "metadata_per_slot",
                P::NAME,
                pool.slot_size() as u64,
                "none",
                per,
                "bytes",
            )
            .note(format!("{} pool", human(bytes as u64))),
        );
        Ok(())
    }
    one::<Fast>(plan.pool_bytes, rows)?;
    one::<NextFit>(plan.pool_bytes, rows)
}

/// Resident memory of this process in KiB, where the system says
/// (Linux's `/proc`); `None` elsewhere.
fn resident_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Builds a 6 GiB pool: heap memory plus per-slot metadata for 3,145,728
/// slots. Only `new_heap` is timed. A machine that cannot give 6 GiB gets
/// a warning instead of the rows, and the rest of the report still stands.
///
/// The resident-memory row says how much memory the build touched: memory
/// handed out lazily (fresh zero pages) costs nothing until used, memory
/// zeroed by writing costs a page fault per page, which for 6 GiB takes
/// seconds and would dwarf the metadata. (Memory the allocator reuses was
/// resident already and does not show.)
fn init_part(plan: &Plan, rows: &mut Vec<Row>) {
    fn one<P: Policy>(bytes: usize) -> Result<(f64, Option<u64>), Error> {
        let before = resident_kib();
        let t = Instant::now();
        let pool = heap::<P>(bytes, 1)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let after = resident_kib();
        let want = bytes >> pool.slot_size().trailing_zeros();
        if pool.nslabs() as usize != want {
            return Err(Error::Bench(format!(
                "the pool has {} slots, not {want}",
                pool.nslabs()
            )));
        }
        drop(black_box(pool));
        Ok((ms, before.zip(after).map(|(b, a)| a.saturating_sub(b))))
    }
    let bytes = INIT_BYTES;
    let mut samples: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut resident = [None, None];
    for rep in 0..plan.init_samples {
        // The first build of a run can pay for the host backing the memory
        // on top of the guest's faults; alternating the order keeps that
        // from always falling on the same policy.
        let order = if rep % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let r = if i == 0 {
                one::<Fast>(bytes)
            } else {
                one::<NextFit>(bytes)
            };
            match r {
                Ok((ms, kib)) => {
                    samples[i].push(ms);
                    resident[i] = kib;
                }
                Err(e) => {
                    eprintln!(
                        "swiotlb bench: init_6gib not measured ({}): {e}",
                        human(bytes as u64)
                    );
                    return;
                }
            }
        }
    }
    for (i, policy) in [Fast::NAME, NextFit::NAME].into_iter().enumerate() {
        let s = timing::summarize(&samples[i]);
        let mut row =
            Row::new("init_6gib", policy, bytes as u64, "none", s.median, "ms").note(format!(
                "Pool::new_heap of {}, memory and metadata",
                human(bytes as u64)
            ));
        if samples[i].len() > 2 {
            row = row.spread(s.spread);
        }
        rows.push(row);
        if let Some(kib) = resident[i] {
            rows.push(
                Row::new(
                    "init_6gib_resident",
                    policy,
                    bytes as u64,
                    "none",
                    kib as f64 / 1024.0,
                    "MiB",
                )
                .note("resident memory the build added"),
            );
        }
    }
}
