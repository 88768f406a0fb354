//! `swiotlb simulate --profile NAME`: a synthetic workload on a growing
//! tlb ([`IoTlb`] over heap memory), and what the tlb did with it.
//!
//! Worker threads, one device each (every mapping bounces, as in a
//! confidential VM), map real heap buffers of seeded log-uniform sizes
//! between 4 KiB and 256 KiB, bidirectionally, and unmap them. Before an
//! unmap a few bytes of the CPU's copy are overwritten; after it the whole
//! buffer must again hold its pattern, so every byte made the trip through
//! the bounce slots and back.
//!
//! A background thread calls [`IoTlb::maintain`] every millisecond, as a
//! kernel worker would: it does the growth that callers which may not sleep
//! ask for, and gives back idle pools.
//!
//! Time: the tlb's clock is the real monotonic clock ([`StdClock`]) plus
//! time the simulation skips ([`ManualClock`]). Waits are real and measured
//! as such (`max_wait_us`); idle phases skip the clock forward one idle
//! time at a time, calling `maintain()` after each skip, so they take no
//! real time and their outcome does not depend on the machine's speed.
//!
//! With `--plot`, the background thread also notes the tlb's slots held
//! and slots in all its pools after each of its calls, the workers note
//! their failed maps, and the phases (warmed up, release, idle) become
//! markers, all against the tlb's clock. At each release the workers wait
//! until its sample is taken, so the picture holds the live set's peak.
//! A growing tlb's pools come and go, so the picture has no occupancy map.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, LazyLock, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use serde::Serialize;
use swiotlb::tlb::{Clock, GrowConfig, Growth, IoTlb, ManualClock, TlbKind, TlbStats};
use swiotlb::{Attrs, Device, Direction, DmaMask, Fast, MapFailed, Mapping};
use swiotlb_host::{HeapProvider, StdClock};

use crate::error::Error;
use crate::plot::Timeline;
use crate::rng::{log_uniform, seeded, Rng};
use crate::units::{human, parse_size, SizeError};
use rand::{Rng as _, RngExt as _, SeedableRng as _};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// The smallest and largest mapping of every profile.
const MIN_MAP: u64 = 4 * KIB;
const MAX_MAP: u64 = 256 * KIB;
/// Sizes are whole sectors.
const SECTOR: u64 = 512;

/// The largest mapping a pool holds (Linux's geometry: a segment of 128
/// slots of 2 KiB); the least `--start` and `--grow-by`.
const SEGMENT: u64 = 256 * KIB;

/// `burst`: the live set the ramp reaches.
const BURST_PEAK: u64 = 256 * MIB;
/// `steady`: the warm-up's live set, then the oscillation's bounds.
const STEADY_WARM: u64 = 128 * MIB;
const STEADY_HIGH: u64 = 96 * MIB;
const STEADY_LOW: u64 = 32 * MIB;
/// `steady`: up-and-down cycles after the warm-up.
const STEADY_CYCLES: u32 = 16;
/// `steady`: the most warm-up rounds (up to the warm level and back).
const STEADY_WARMUP_ROUNDS: u32 = 8;

/// How often the background thread calls `maintain()`, in real time.
const TICK: Duration = Duration::from_millis(1);

/// The workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ProfileName {
    /// Ramp up to a 256 MiB live set, hold it, release everything, idle.
    Burst,
    /// Warm up (to 128 MiB and back to 32 MiB until a round needs no
    /// growth), then oscillate between 32 and 96 MiB for 16 cycles (8 idle
    /// times), then release and idle.
    Steady,
}

impl ProfileName {
    fn name(self) -> &'static str {
        match self {
            ProfileName::Burst => "burst",
            ProfileName::Steady => "steady",
        }
    }
}

/// How the workload's callers map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// Callers that may sleep (`MAY_SLEEP`): a full tlb is grown by the
    /// caller itself, or the caller waits (FIFO, at most --wait-ms) while
    /// another caller grows it.
    MaySleep,
    /// Callers that may not sleep: a full tlb gives them a transient pool
    /// of exactly their mapping and asks the background thread to grow.
    Atomic,
    /// Deferred requests (`map_async`): queued in FIFO order and completed
    /// when slots free up or the background thread grows the tlb; a caller
    /// gives up (cancels) after --wait-ms.
    Deferred,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::MaySleep => "may-sleep",
            Mode::Atomic => "atomic",
            Mode::Deferred => "deferred",
        }
    }
}

fn size_arg(s: &str) -> Result<u64, SizeError> {
    parse_size(s)
}

/// The options of `swiotlb simulate --profile`.
#[derive(clap::Args, Debug)]
pub(crate) struct ProfileArgs {
    /// Run a synthetic workload on a growing tlb instead of a script:
    /// `burst` (a 256 MiB live set, then idle) or `steady` (a live set
    /// oscillating inside the grown size).
    #[arg(long, value_enum, value_name = "NAME",
          conflicts_with_all = ["nslabs", "nareas", "policy"])]
    profile: Option<ProfileName>,
    /// Bytes of the first pool. Sizes here and in scripts share one
    /// grammar: bytes, decimal or 0x hex, optionally with a unit that is a
    /// power of two: B, K/KiB (1024), M/MiB (1024^2), G/GiB, T/TiB.
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = size_arg,
          conflicts_with = "ops")]
    start: u64,
    /// The most bytes the tlb may hold, transient pools included.
    #[arg(long, value_name = "SIZE", default_value = "512MiB", value_parser = size_arg,
          conflicts_with = "ops")]
    max: u64,
    /// Bytes of each pool growth adds [default: the larger of --start and 4MiB].
    #[arg(long, value_name = "SIZE", value_parser = size_arg, conflicts_with = "ops")]
    grow_by: Option<u64>,
    /// How long a grown pool must stay free and untouched before it is given back.
    #[arg(long, value_name = "N", default_value_t = 1000, conflicts_with = "ops")]
    idle_ms: u64,
    /// How long a caller waits for room before it fails (may-sleep) or cancels (deferred).
    #[arg(long, value_name = "N", default_value_t = 1000, conflicts_with = "ops")]
    wait_ms: u64,
    /// Worker threads, one device each; the live set is shared among them.
    #[arg(long, value_name = "N", default_value_t = 2, conflicts_with = "ops",
          value_parser = clap::value_parser!(u32).range(1..=256))]
    threads: u32,
    /// Seed of the mapping sizes (the same seed gives the same sizes).
    #[arg(long, value_name = "N", default_value_t = 1, conflicts_with = "ops")]
    seed: u64,
    /// How callers map: may-sleep, atomic or deferred.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = Mode::MaySleep,
          conflicts_with = "ops")]
    mode: Mode,
}

/// The tlb's clock: real time plus skipped time (see the module docs).
#[derive(Default)]
struct SimClock {
    real: StdClock,
    skipped: ManualClock,
}

impl Clock for SimClock {
    fn now_ns(&self) -> u64 {
        self.real.now_ns().saturating_add(self.skipped.now_ns())
    }
}

/// A log-uniform size in `[MIN_MAP, MAX_MAP]`, whole sectors.
fn map_size(rng: &mut Rng) -> u64 {
    (log_uniform(rng, MIN_MAP, MAX_MAP) / SECTOR * SECTOR).clamp(MIN_MAP, MAX_MAP)
}

/// The bytes every buffer is cut from: mapping `k` holds
/// `PATTERN[shift(k)..][..len]`, so a byte in the wrong place or from
/// another mapping shows.
const SHIFTS: usize = 4096;
static PATTERN: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut v = vec![0; MAX_MAP as usize + SHIFTS];
    seeded(0x5157_4f54_4c42).fill_bytes(&mut v);
    v
});

/// Bytes of the CPU's copy overwritten before an unmap, at its start,
/// middle and end: the unmap's copy back must restore them.
const CLOBBER: usize = 64;

type Map<'t> = Mapping<'t, Vec<u8>, Fast>;

struct Live<'t> {
    mapping: Map<'t>,
    shift: usize,
}

/// The whole run's counters, shared by the workers.
#[derive(Default)]
struct Shared {
    live: AtomicU64,
    peak_live: AtomicU64,
    mappings: AtomicU64,
    failures: AtomicU64,
    data_errors: AtomicU64,
    /// Deferred requests cancelled after --wait-ms.
    gave_up: AtomicU64,
    /// `steady`: warm-up rounds run, and whether the last one was quiet.
    warmup_rounds: AtomicU32,
    warm: AtomicBool,
}

/// Everything a worker needs.
struct Ctx<'t> {
    tlb: &'t IoTlb,
    clock: &'t SimClock,
    shared: &'t Shared,
    mode: Mode,
    wait: Duration,
    idle_ns: u64,
    /// Keeps the workers' phases in step.
    barrier: Barrier,
    /// `steady`: the counters at the end of the warm-up, then their
    /// growth since.
    after_warmup: Mutex<Option<Counts>>,
    /// With `--plot`: what the picture shows.
    plot: Option<Plotting>,
}

impl Ctx<'_> {
    /// With `--plot`: notes the tlb's use now.
    fn sample(&self) {
        if let Some(t) = &self.plot {
            t.sample(self.tlb, self.clock);
        }
    }

    /// With `--plot`: a marker, and the tlb's use, now.
    fn mark(&self, label: &str) {
        if let Some(t) = &self.plot {
            t.sample(self.tlb, self.clock);
            let mut s = t.lock();
            let x = t.x(self.clock);
            s.markers.push((x, label.into()));
        }
    }

    /// With `--plot`: a failed map now.
    fn failed(&self) {
        if let Some(t) = &self.plot {
            let mut s = t.lock();
            let x = t.x(self.clock);
            s.failures.push(x);
        }
    }
}

/// The notes of a run with `--plot`, against the tlb's clock.
struct Plotting {
    /// The clock's reading at the start, in nanoseconds.
    began: u64,
    notes: Mutex<Notes>,
}

/// Samples are kept only when they differ from the one before; `x` is
/// read under the lock, so each list is in time order.
#[derive(Default)]
struct Notes {
    used: Vec<(f64, u64)>,
    pool: Vec<(f64, u64)>,
    markers: Vec<(f64, String)>,
    failures: Vec<f64>,
}

impl Plotting {
    fn lock(&self) -> MutexGuard<'_, Notes> {
        self.notes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Seconds since the start on the tlb's clock.
    fn x(&self, clock: &SimClock) -> f64 {
        clock.now_ns().saturating_sub(self.began) as f64 / 1e9
    }

    fn sample(&self, tlb: &IoTlb, clock: &SimClock) {
        let mut s = self.lock();
        let st = tlb.stats().pool;
        let x = self.x(clock);
        if s.used.last().map(|p| p.1) != Some(st.io_tlb_used) {
            s.used.push((x, st.io_tlb_used));
        }
        if s.pool.last().map(|p| p.1) != Some(st.io_tlb_nslabs) {
            s.pool.push((x, st.io_tlb_nslabs));
        }
    }
}

/// `steady`: pools added, pools removed, transient pools made.
type Counts = (u64, u64, u64);

fn counts(st: &TlbStats) -> Counts {
    (st.pools_added, st.pools_removed, st.transient_made)
}

/// One worker: its device, sizes and live mappings.
struct Worker<'t> {
    ctx: &'t Ctx<'t>,
    dev: Device,
    rng: Rng,
    live: Vec<Live<'t>>,
    live_bytes: u64,
    /// Numbers this worker's mappings, for their patterns.
    serial: u64,
}

impl<'t> Worker<'t> {
    /// A worker drawing from `rng`, a stream of its own.
    fn new(ctx: &'t Ctx<'t>, mut rng: Rng) -> Self {
        let serial = rng.next_u64();
        Self {
            ctx,
            dev: Device::new(DmaMask::BITS_64).with_force_bounce(),
            rng,
            live: Vec::new(),
            live_bytes: 0,
            serial,
        }
    }

    /// Maps until this worker's live bytes reach `target` exactly. Stops
    /// at the first failure (the rest would most likely fail too, each
    /// after a full wait); returns whether it got there.
    fn fill_to(&mut self, target: u64) -> bool {
        while self.live_bytes < target {
            let left = target - self.live_bytes;
            let mut len = map_size(&mut self.rng);
            if left < MIN_MAP {
                // After a drain to an arbitrary level: overshoot a little
                // rather than map less than the smallest size.
                len = MIN_MAP;
            } else if len >= left {
                len = left;
            } else if left - len < MIN_MAP {
                // Leave no remainder below the smallest size.
                len = if left <= MAX_MAP {
                    left
                } else {
                    left - MIN_MAP
                };
            }
            if !self.map_one(len) {
                return false;
            }
        }
        true
    }

    /// Unmaps mappings picked at random until this worker's live bytes
    /// are at most `target`.
    fn drain_to(&mut self, target: u64) {
        while self.live_bytes > target && !self.live.is_empty() {
            let at = self.rng.random_range(0..self.live.len());
            let live = self.live.swap_remove(at);
            self.unmap_one(live);
        }
    }

    fn map_one(&mut self, len: u64) -> bool {
        let shift = (self.serial % SHIFTS as u64) as usize;
        self.serial = self.serial.wrapping_add(1);
        let buf = PATTERN[shift..shift + len as usize].to_vec();
        let s = self.ctx.shared;
        s.mappings.fetch_add(1, Ordering::Relaxed);
        let tlb = self.ctx.tlb;
        let dir = Direction::Bidirectional;
        let r = match self.ctx.mode {
            Mode::MaySleep => tlb.map_with_attrs(&self.dev, buf, dir, Attrs::MAY_SLEEP),
            Mode::Atomic => tlb.map_with_attrs(&self.dev, buf, dir, Attrs::NONE),
            Mode::Deferred => {
                match block_on_until(
                    tlb.map_async(&self.dev, buf, dir),
                    Instant::now() + self.ctx.wait,
                ) {
                    Some(r) => r,
                    None => {
                        // The request was cancelled when its future was dropped.
                        s.gave_up.fetch_add(1, Ordering::Relaxed);
                        s.failures.fetch_add(1, Ordering::Relaxed);
                        self.ctx.failed();
                        return false;
                    }
                }
            }
        };
        match r {
            Ok(mapping) => {
                if !mapping.is_bounced() {
                    s.data_errors.fetch_add(1, Ordering::Relaxed);
                }
                self.live.push(Live { mapping, shift });
                self.live_bytes += len;
                let now = s.live.fetch_add(len, Ordering::Relaxed) + len;
                s.peak_live.fetch_max(now, Ordering::Relaxed);
                true
            }
            Err(MapFailed { .. }) => {
                s.failures.fetch_add(1, Ordering::Relaxed);
                self.ctx.failed();
                false
            }
        }
    }

    fn unmap_one(&mut self, live: Live<'t>) {
        let Live { mut mapping, shift } = live;
        let len = mapping.len();
        let zeros = [0u8; CLOBBER];
        let n = CLOBBER.min(len);
        let mut ok = true;
        for off in [0, len / 2 - n / 2, len - n] {
            ok &= mapping.write(off, &zeros[..n]).is_ok();
        }
        let buf = mapping.unmap();
        ok &= buf[..] == PATTERN[shift..shift + len];
        let s = self.ctx.shared;
        if !ok {
            s.data_errors.fetch_add(1, Ordering::Relaxed);
        }
        self.live_bytes -= len as u64;
        s.live.fetch_sub(len as u64, Ordering::Relaxed);
    }

    /// Skips the clock forward by `ns` and lets the tlb look at itself.
    fn tick(&self, ns: u64) {
        self.ctx.clock.skipped.advance(ns);
        let _ = self.ctx.tlb.maintain();
    }

    /// Waits for every worker; `true` in exactly one of them.
    fn sync(&self) -> bool {
        self.ctx.barrier.wait().is_leader()
    }

    /// `burst`: this worker's share of the peak, all shares live at once,
    /// then everything released.
    fn burst(&mut self, i: u32, threads: u32) {
        self.fill_to(share(BURST_PEAK, threads, i));
        if self.sync() {
            self.ctx.mark("release");
        }
        if self.ctx.plot.is_some() {
            // The picture's peak: nobody drains before the mark's sample.
            self.sync();
        }
        self.drain_to(0);
    }

    /// `steady`: warm-up rounds, then cycles between the low and high
    /// levels with a quarter idle time skipped (and a `maintain()`) after
    /// each half cycle, then everything released.
    fn steady(&mut self, i: u32, threads: u32) {
        let ctx = self.ctx;
        let (warm, high, low) = (
            share(STEADY_WARM, threads, i),
            share(STEADY_HIGH, threads, i),
            share(STEADY_LOW, threads, i),
        );
        let now = || counts(&ctx.tlb.stats());
        // Warm-up: up to the warm level and back down until a round
        // neither grows the tlb nor needs a transient pool (callers that
        // may not sleep leave growth to the background thread, which lags
        // behind a ramp).
        for round in 1..=STEADY_WARMUP_ROUNDS {
            if self.sync() {
                *ctx.after_warmup.lock().unwrap() = Some(now());
            }
            self.sync();
            self.fill_to(warm);
            self.sync();
            self.drain_to(low);
            if self.sync() {
                let before = ctx.after_warmup.lock().unwrap().unwrap_or_default();
                let after = now();
                ctx.shared.warmup_rounds.store(round, Ordering::Relaxed);
                if after.0 == before.0 && after.2 == before.2 {
                    ctx.shared.warm.store(true, Ordering::Relaxed);
                }
            }
            self.sync();
            if ctx.shared.warm.load(Ordering::Relaxed) {
                break;
            }
        }
        if self.sync() {
            *ctx.after_warmup.lock().unwrap() = Some(now());
            ctx.mark("warmed up");
        }
        self.sync();
        let quarter = ctx.idle_ns / 4;
        for _ in 0..STEADY_CYCLES {
            self.fill_to(high);
            if self.sync() {
                self.tick(quarter);
            }
            self.sync();
            self.drain_to(low);
            if self.sync() {
                self.tick(quarter);
            }
            self.sync();
        }
        if self.sync() {
            let mut a = ctx.after_warmup.lock().unwrap();
            if let Some((added, removed, made)) = *a {
                let (na, nr, nm) = now();
                *a = Some((na - added, nr - removed, nm - made));
            }
            ctx.mark("release");
        }
        self.sync();
        self.drain_to(0);
    }
}

struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `fut` on this thread until it is ready or `deadline` passes;
/// `None` (and `fut` dropped) at the deadline.
fn block_on_until<F: Future + Unpin>(mut fut: F, deadline: Instant) -> Option<F::Output> {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = Pin::new(&mut fut).poll(&mut cx) {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::park_timeout(deadline - now);
    }
}

/// A run's settings, checked.
struct Plan {
    profile: ProfileName,
    mode: Mode,
    threads: u32,
    seed: u64,
    config: GrowConfig,
}

fn plan(args: &ProfileArgs) -> Result<Plan, Error> {
    let Some(profile) = args.profile else {
        return Err(Error::BadArgument {
            arg: "--profile",
            why: "is needed without --ops".into(),
        });
    };
    let start = args.start;
    let max = args.max;
    let grow_by = args.grow_by.unwrap_or(start.max(4 * MIB));
    if start < SEGMENT {
        return Err(Error::BadArgument {
            arg: "--start",
            why: format!(
                "{} is too small: the first pool must hold at least one segment \
                 ({}, the largest mapping)",
                human(start),
                human(SEGMENT)
            ),
        });
    }
    if grow_by < SEGMENT {
        return Err(Error::BadArgument {
            arg: "--grow-by",
            why: format!(
                "{} is too small: a grown pool must hold at least one segment \
                 ({}, the largest mapping)",
                human(grow_by),
                human(SEGMENT)
            ),
        });
    }
    if max < start {
        return Err(Error::BadArgument {
            arg: "--max",
            why: format!(
                "{} is below --start {}: the limit counts the first pool",
                human(max),
                human(start)
            ),
        });
    }
    let too_big = |arg: &'static str, n: u64| {
        usize::try_from(n).map_err(|_| Error::BadArgument {
            arg,
            why: format!("{} does not fit this machine", human(n)),
        })
    };
    let mut config = GrowConfig::new(too_big("--start", start)?, too_big("--max", max)?);
    config.grow_by = too_big("--grow-by", grow_by)?;
    config.idle = args.idle_ms.saturating_mul(1_000_000);
    config.wait_timeout = args.wait_ms.saturating_mul(1_000_000);
    Ok(Plan {
        profile,
        mode: args.mode,
        threads: args.threads,
        seed: args.seed,
        config,
    })
}

/// A size for the table: exact below 1 MiB or in whole MiB, else MiB
/// with two decimals.
fn size(n: u64) -> String {
    if n < MIB || n.is_multiple_of(MIB) {
        human(n)
    } else {
        format!("{:.2} MiB", n as f64 / MIB as f64)
    }
}

/// Splits `total` bytes among `n` workers, in whole sectors.
fn share(total: u64, n: u32, i: u32) -> u64 {
    let each = total / u64::from(n) / SECTOR * SECTOR;
    if i + 1 == n {
        total - each * u64::from(n - 1)
    } else {
        each
    }
}

/// `swiotlb simulate --profile NAME --json`: one flat object of the
/// settings and the counters.
#[derive(Serialize)]
pub(crate) struct ProfileReport {
    profile: &'static str,
    mode: &'static str,
    threads: u32,
    seed: u64,
    start_bytes: usize,
    max_bytes: usize,
    grow_by_bytes: usize,
    idle_ms: u64,
    mappings: u64,
    failures: u64,
    data_errors: u64,
    peak_live_bytes: u64,
    peak_pool_bytes: u64,
    final_pool_bytes: u64,
    final_pools: u64,
    pools_added: u64,
    pools_removed: u64,
    grow_failures: u64,
    transient_pools: u64,
    deferred: u64,
    max_wait_us: u64,
    timeouts: u64,
    elapsed_ms: u64,
    skipped_ms: u64,
    /// `steady` only.
    #[serde(flatten)]
    warmup: Option<WarmupReport>,
}

/// `steady`: the warm-up, and what the tlb did after it.
#[derive(Serialize)]
struct WarmupReport {
    warmup_rounds: u32,
    warmed_up: bool,
    pools_added_after_warmup: u64,
    pools_removed_after_warmup: u64,
    transient_pools_after_warmup: u64,
}

/// What a run produced.
pub(crate) struct Report {
    plan: Plan,
    mappings: u64,
    failures: u64,
    data_errors: u64,
    peak_live: u64,
    stats: TlbStats,
    final_pools: u64,
    timeouts: u64,
    elapsed: Duration,
    /// Simulated time: all the clock skipped (steady's cycles, the idle
    /// phase).
    skipped_ms: u64,
    /// `steady`: pools added, pools removed and transient pools made
    /// after the warm-up, up to the final release.
    after_warmup: Option<Counts>,
    /// `steady`: warm-up rounds run, and whether the last was quiet.
    warmup: (u32, bool),
    /// With `--plot`: the run against the tlb's clock.
    timeline: Option<Timeline>,
}

/// Runs a profile; with `plot`, notes what a picture of it needs.
pub(crate) fn run(args: &ProfileArgs, plot: bool) -> Result<Report, Error> {
    let plan = plan(args)?;
    let clock = Arc::new(SimClock::default());
    let tlb = IoTlb::growing(
        TlbKind::Default,
        Growth::new(HeapProvider::new(), plan.config),
    )
    .map(|t| t.with_clock(clock.clone()))
    .map_err(|e| Error::provider("cannot build the first pool", e))?;
    LazyLock::force(&PATTERN);
    let shared = Shared::default();
    let ctx = Ctx {
        tlb: &tlb,
        clock: &clock,
        shared: &shared,
        mode: plan.mode,
        wait: Duration::from_nanos(plan.config.wait_timeout),
        idle_ns: plan.config.idle,
        barrier: Barrier::new(plan.threads as usize),
        after_warmup: Mutex::new(None),
        plot: plot.then(|| Plotting {
            began: clock.now_ns(),
            notes: Mutex::default(),
        }),
    };
    ctx.sample();
    let began = Instant::now();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let background = s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let r = tlb.maintain();
                ctx.sample();
                match r {
                    Ok((true, _)) => {}
                    _ => std::thread::sleep(TICK),
                }
            }
        });
        // One stream per worker, each forked from the one --seed names, so
        // the workers' draws do not depend on how their threads interleave.
        let mut seed = seeded(plan.seed);
        let workers: Vec<_> = (0..plan.threads)
            .map(|i| {
                let ctx = &ctx;
                let (profile, threads) = (plan.profile, plan.threads);
                let rng = seed.fork();
                s.spawn(move || {
                    let mut w = Worker::new(ctx, rng);
                    match profile {
                        ProfileName::Burst => w.burst(i, threads),
                        ProfileName::Steady => w.steady(i, threads),
                    }
                })
            })
            .collect();
        for w in workers {
            if let Err(p) = w.join() {
                std::panic::resume_unwind(p);
            }
        }
        stop.store(true, Ordering::Relaxed);
        let _ = background.join();
    });
    // Idle: skip one idle time per step and let the tlb give pools back,
    // until nothing more goes back.
    ctx.mark("idle");
    let step = plan.config.idle.max(1);
    let mut quiet_steps = 0;
    while quiet_steps < 3 {
        clock.skipped.advance(step);
        let r = tlb.maintain();
        ctx.sample();
        match r {
            Ok((_, true)) => quiet_steps = 0,
            _ => quiet_steps += 1,
        }
    }
    let elapsed = began.elapsed();
    let stats = tlb.stats();
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let after_warmup = ctx.after_warmup.into_inner().unwrap_or(None);
    let timeline = ctx.plot.map(|t| {
        let end = t.x(&clock);
        let mut notes = t.notes.into_inner().unwrap_or_else(PoisonError::into_inner);
        // The last value holds to the end of the run.
        if let Some(&(_, used)) = notes.used.last() {
            notes.used.push((end, used));
        }
        Timeline {
            title: title(&plan),
            x_label: "seconds on the tlb's clock (idle time skipped ahead)",
            pool_slots: notes.pool,
            points: notes.used,
            markers: notes.markers,
            failures: notes.failures,
            peak: None,
        }
    });
    Ok(Report {
        mappings: ld(&shared.mappings),
        failures: ld(&shared.failures),
        data_errors: ld(&shared.data_errors),
        peak_live: ld(&shared.peak_live),
        final_pools: stats.pools,
        timeouts: stats.timeouts + ld(&shared.gave_up),
        elapsed,
        skipped_ms: clock.skipped.now_ns() / 1_000_000,
        after_warmup: if plan.profile == ProfileName::Steady {
            after_warmup
        } else {
            None
        },
        warmup: (
            shared.warmup_rounds.load(Ordering::Relaxed),
            shared.warm.load(Ordering::Relaxed),
        ),
        stats,
        plan,
        timeline,
    })
}

/// The picture's title: the profile and the tlb.
fn title(p: &Plan) -> String {
    let threads = if p.threads == 1 { "thread" } else { "threads" };
    format!(
        "simulate --profile {}: {} callers, {} {threads}, tlb of {} growing by {} up to {}",
        p.profile.name(),
        p.mode.name(),
        p.threads,
        human(p.config.start as u64),
        human(p.config.grow_by as u64),
        human(p.config.max as u64),
    )
}

impl Report {
    /// Mappings whose bytes did not come back intact.
    pub(crate) fn data_errors(&self) -> u64 {
        self.data_errors
    }

    /// With `--plot`: the picture's timeline.
    pub(crate) fn timeline(&self) -> Option<&Timeline> {
        self.timeline.as_ref()
    }

    /// The report's JSON form.
    pub(crate) fn report(&self) -> ProfileReport {
        let p = &self.plan;
        let s = &self.stats;
        ProfileReport {
            profile: p.profile.name(),
            mode: p.mode.name(),
            threads: p.threads,
            seed: p.seed,
            start_bytes: p.config.start,
            max_bytes: p.config.max,
            grow_by_bytes: p.config.grow_by,
            idle_ms: p.config.idle / 1_000_000,
            mappings: self.mappings,
            failures: self.failures,
            data_errors: self.data_errors,
            peak_live_bytes: self.peak_live,
            peak_pool_bytes: s.peak_bytes_held,
            final_pool_bytes: s.bytes_held,
            final_pools: self.final_pools,
            pools_added: s.pools_added,
            pools_removed: s.pools_removed,
            grow_failures: s.grow_failures,
            transient_pools: s.transient_made,
            deferred: s.deferred,
            max_wait_us: s.max_wait_ns / 1000,
            timeouts: self.timeouts,
            elapsed_ms: u64::try_from(self.elapsed.as_millis()).unwrap_or(u64::MAX),
            skipped_ms: self.skipped_ms,
            warmup: self
                .after_warmup
                .map(|(added, removed, made)| WarmupReport {
                    warmup_rounds: self.warmup.0,
                    warmed_up: self.warmup.1,
                    pools_added_after_warmup: added,
                    pools_removed_after_warmup: removed,
                    transient_pools_after_warmup: made,
                }),
        }
    }

    pub(crate) fn to_text(&self) -> String {
        let p = &self.plan;
        let s = &self.stats;
        let mut t = String::new();
        let threads = if p.threads == 1 { "thread" } else { "threads" };
        // Writing to a String cannot fail.
        let _ = writeln!(
            t,
            "profile {}, {} callers, {} {threads}, seed {}",
            p.profile.name(),
            p.mode.name(),
            p.threads,
            p.seed
        );
        let _ = writeln!(
            t,
            "tlb: start {}, grow by {}, max {}, idle {} ms",
            human(p.config.start as u64),
            human(p.config.grow_by as u64),
            human(p.config.max as u64),
            p.config.idle / 1_000_000
        );
        let _ = writeln!(t);
        let mut row = |name: &str, value: String| {
            let _ = writeln!(t, "  {name:<26} {value}");
        };
        row("mappings", self.mappings.to_string());
        row("failures", self.failures.to_string());
        row("data errors", self.data_errors.to_string());
        let pools = if self.final_pools == 1 {
            "pool"
        } else {
            "pools"
        };
        row("peak live set", size(self.peak_live));
        row("peak pool memory", size(s.peak_bytes_held));
        row(
            "final pool memory",
            format!("{} ({} {pools})", size(s.bytes_held), self.final_pools),
        );
        row("pools added", s.pools_added.to_string());
        row("pools removed", s.pools_removed.to_string());
        if let Some((added, removed, _)) = self.after_warmup {
            let (rounds, quiet) = self.warmup;
            let how = if quiet { "" } else { ", still growing" };
            row("  warm-up rounds", format!("{rounds}{how}"));
            row("  added after warm-up", added.to_string());
            row("  removed after warm-up", removed.to_string());
        }
        row("transient pools made", s.transient_made.to_string());
        if let Some((_, _, made)) = self.after_warmup {
            row("  made after warm-up", made.to_string());
        }
        row("waited or deferred", s.deferred.to_string());
        row("longest wait", format!("{} us", s.max_wait_ns / 1000));
        row("timeouts", self.timeouts.to_string());
        row("elapsed", format!("{} ms", self.elapsed.as_millis()));
        row("simulated time skipped", format!("{} ms", self.skipped_ms));
        t
    }
}
