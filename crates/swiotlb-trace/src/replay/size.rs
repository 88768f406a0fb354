//! The sizing advisor: the smallest pool with which a trace replays
//! without a failure, found by replaying it.
//!
//! Failures are not monotone in the pool size (the areas and every
//! placement change with it), so the search does not bisect on faith:
//!
//! 1. The trace's demand, the most slots its live bounces held at once on
//!    a pool too large to fail, is a lower bound: no smaller pool can
//!    hold them, whatever the policy.
//! 2. Linux can build only some pools: with areas, `swiotlb=` slot counts
//!    are rounded up to a power of two (and to a segment per area). Every
//!    such size from the lower bound up is replayed in turn; the first
//!    without a failure is the answer, so it is exact among the pools
//!    Linux can build.
//! 3. The two next larger sizes are replayed too: a failure there would
//!    show a size that works by luck, and is reported.
//! 4. For our own library, which builds any multiple of 128 slots, the
//!    smallest such size is bisected between the lower bound and the
//!    answer, then checked by replaying the sizes just below it (and
//!    walking further down if one of them passes).

use serde::Serialize;

use super::exec::GrowPlan;
use super::pair::Op;
use super::report::{Era, GrowthEvent, Policy, Timeline};
use super::{
    new_exec, prepare, schedule, Geometry, GeometrySource, Input, Options, Prepared, ReplayError,
};
use swiotlb::config::{SwiotlbParam, IO_TLB_SEGSIZE, IO_TLB_SHIFT};

/// How to size.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SizeOptions {
    /// The trace's options: areas, kernel log, `min_align` overrides,
    /// timeline (for the recommended pool). The slot count and policy are
    /// what the search chooses.
    pub replay: Options,
    /// Free slots the recommendation keeps at the replay's peak, in
    /// percent of the pool.
    pub margin_percent: u32,
    /// The largest pool tried, in slots.
    pub max_nslabs: u64,
}

impl Default for SizeOptions {
    fn default() -> Self {
        SizeOptions {
            replay: Options::default(),
            margin_percent: 25,
            max_nslabs: 1 << 22,
        }
    }
}

/// One pool replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Candidate {
    /// Slots.
    pub nslabs: u64,
    /// Areas.
    pub nareas: u32,
    /// Maps the replay failed.
    pub failures: u64,
    /// Its `io_tlb_used_hiwater`.
    pub io_tlb_used_hiwater: u64,
}

/// The answer for one policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Sizing {
    /// The policy replayed.
    pub policy: Policy,
    /// The smallest pool Linux can build with which the replay has no
    /// failure.
    pub smallest: Candidate,
    /// The smallest such pool that also keeps the margin free at the peak.
    pub recommended: Candidate,
    /// The `swiotlb=` value for `recommended`.
    pub swiotlb: String,
    /// Every pool replayed, in order.
    pub tried: Vec<Candidate>,
    /// Whether a pool larger than `smallest` failed.
    pub non_monotone: bool,
    /// The smallest multiple of 128 slots without a failure (our library
    /// builds any of them), and how many sizes below it were replayed to
    /// check it.
    pub smallest_any: Candidate,
    /// Sizes just below `smallest_any` replayed, all failing.
    pub checked_below: u32,
    /// Whether every size from the demand up to `smallest_any` was
    /// replayed (so no smaller multiple of 128 works).
    pub exhaustive: bool,
}

/// What our growing tlb would do with the trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DynamicAdvice {
    /// Slots of its first pool.
    pub start_slots: u64,
    /// Slots of each pool it adds.
    pub grow_by_slots: u64,
    /// The most slots it may hold.
    pub max_slots: u64,
    /// Trace milliseconds a grown pool stays empty before it is given back.
    pub idle_ms: u64,
    /// The configuration, as Rust: `GrowConfig::new(start, max)` in bytes.
    pub config: String,
    /// Maps it failed.
    pub failures: u64,
    /// The most slots all its pools held at once.
    pub peak_slots: u64,
    /// Pools added.
    pub pools_added: u64,
    /// Pools given back.
    pub pools_removed: u64,
    /// When pools were added and given back.
    pub events: Vec<GrowthEvent>,
}

/// The result of [`size`].
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct SizeReport {
    /// Lines read.
    pub lines: u64,
    /// What the trace can tell.
    pub era: Era,
    /// Bounces in the trace.
    pub mappings: u64,
    /// The most slots the trace's live bounces held at once: no pool
    /// smaller than this can hold them.
    pub demand_slots: u64,
    /// Areas of every pool tried.
    pub nareas: u32,
    /// Where the area count came from.
    pub nareas_source: GeometrySource,
    /// The kernel's own pool, when its log is given: slots and failures.
    pub kernel_nslabs: Option<u64>,
    /// Bounced maps the kernel failed in the trace.
    pub kernel_failures: u64,
    /// Free slots kept at the peak by the recommendation, in percent.
    pub margin_percent: u32,
    /// The answer with Linux's policy: what to put on the kernel command
    /// line.
    pub nextfit: Sizing,
    /// The answer with our fast policy.
    pub fast: Sizing,
    /// Our growing tlb instead of a fixed pool.
    pub dynamic: DynamicAdvice,
    /// How the search found and checked its answer.
    pub search: String,
    /// Plain sentences about the replay.
    pub notes: Vec<String>,
    /// The recommended pool's replay over time, when asked for.
    #[serde(skip)]
    pub timeline: Option<Timeline>,
}

fn candidate<P: swiotlb::Policy>(
    p: &Prepared,
    ops: &[Op],
    nslabs: u64,
    nareas: u32,
    timeline: bool,
) -> Result<(Candidate, Option<Timeline>), ReplayError> {
    let g = Geometry {
        nslabs,
        nareas,
        ..p.geometry
    };
    let mut exec = new_exec::<P>(p, g, None, timeline)?;
    for op in ops {
        exec.op(op);
    }
    let tl = exec.finish();
    Ok((
        Candidate {
            nslabs,
            nareas: exec.first_pool().nareas(),
            failures: exec.failures,
            io_tlb_used_hiwater: exec.hiwater,
        },
        tl,
    ))
}

/// The pools Linux builds for `swiotlb=N,nareas`, from the smallest
/// holding `demand` slots up to `max`.
fn linux_sizes(demand: u64, nareas: u32, max: u64) -> Vec<(u64, u32)> {
    let mut out = Vec::new();
    let mut n = u64::from(IO_TLB_SEGSIZE);
    while n <= max {
        let r = SwiotlbParam::parse(&format!("{n},{nareas}")).resolve(nareas);
        if r.nslabs >= demand
            && r.nslabs <= max
            && out.last().is_none_or(|l: &(u64, u32)| l.0 != r.nslabs)
        {
            out.push((r.nslabs, r.nareas));
        }
        n *= 2;
    }
    out
}

fn sizing<P: swiotlb::Policy>(
    p: &Prepared,
    ops: &[Op],
    policy: Policy,
    demand: u64,
    nareas: u32,
    opts: &SizeOptions,
) -> Result<Sizing, ReplayError> {
    let sizes = linux_sizes(demand, nareas, opts.max_nslabs);
    let mut tried = Vec::new();
    let mut smallest = None;
    let mut recommended = None;
    let mut after = 0;
    let keeps_margin = |c: &Candidate| {
        c.failures == 0
            && c.io_tlb_used_hiwater * 100
                <= c.nslabs * u64::from(100 - opts.margin_percent.min(100))
    };
    for &(n, a) in &sizes {
        let (c, _) = candidate::<P>(p, ops, n, a, false)?;
        tried.push(c);
        if smallest.is_none() && c.failures == 0 {
            smallest = Some(c);
        }
        if recommended.is_none() && smallest.is_some() && keeps_margin(&c) {
            recommended = Some(c);
        }
        if smallest.is_some() {
            after += 1;
            if after > 2 && recommended.is_some() {
                break;
            }
        }
    }
    let smallest = smallest.ok_or(ReplayError::TooLarge {
        nslabs: opts.max_nslabs,
    })?;
    let recommended = recommended.unwrap_or(smallest);
    let non_monotone = tried
        .iter()
        .any(|c| c.nslabs > smallest.nslabs && c.failures > 0);
    // Any multiple of 128: bisect between the demand and the answer, on
    // the answer's area count, then check below.
    let seg = u64::from(IO_TLB_SEGSIZE);
    let a = smallest.nareas;
    let run = |n: u64| candidate::<P>(p, ops, n, a, false).map(|x| x.0);
    let mut lo = demand.div_ceil(seg).max(1); // in segments; may fail
    let mut hi = smallest.nslabs / seg; // passes
    let mut best = smallest;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let c = run(mid * seg)?;
        if c.failures == 0 {
            hi = mid;
            best = c;
        } else {
            lo = mid + 1;
        }
    }
    // Not monotone in general: walk down while one of the next eight
    // smaller sizes passes, or to the demand.
    let floor = demand.div_ceil(seg).max(1);
    let mut n = best.nslabs / seg;
    let mut misses = 0;
    while n > floor && misses < 8 {
        n -= 1;
        let c = run(n * seg)?;
        if c.failures == 0 {
            best = c;
            misses = 0;
        } else {
            misses += 1;
        }
    }
    Ok(Sizing {
        policy,
        smallest,
        recommended,
        swiotlb: format!("swiotlb={},{}", recommended.nslabs, recommended.nareas),
        tried,
        non_monotone,
        smallest_any: best,
        checked_below: misses,
        exhaustive: n <= floor,
    })
}

/// Finds the smallest pool with which `input` replays without a failure.
///
/// # Errors
/// As [`replay`](super::replay); [`ReplayError::CannotSize`] for a trace
/// that does not say when bounces were released;
/// [`ReplayError::TooLarge`] when no pool up to
/// [`SizeOptions::max_nslabs`] holds it.
pub fn size(input: &(impl Input + ?Sized), opts: &SizeOptions) -> Result<SizeReport, ReplayError> {
    let mut p = prepare(input, &opts.replay)?;
    if !matches!(p.era, Era::Full | Era::MapsOnly) {
        return Err(ReplayError::CannotSize(p.era));
    }
    let ops = schedule(input, &mut p)?;
    let log = opts.replay.kernel_log.clone().unwrap_or_default();
    let (nareas, nareas_source) = match (opts.replay.nareas, log.nareas) {
        (Some(n), _) => (n, GeometrySource::Options),
        (None, Some(n)) => (n, GeometrySource::Dmesg),
        (None, None) => (p.survey.cpus.max(1), GeometrySource::Default),
    };
    // The demand: a pool too large to fail, one area (areas change no
    // slot count).
    let big = opts.max_nslabs.min(1 << 24);
    let (probe, _) = candidate::<swiotlb::Fast>(&p, &ops, big, 1, false)?;
    if probe.failures > 0 {
        return Err(ReplayError::TooLarge { nslabs: big });
    }
    let demand = probe.io_tlb_used_hiwater.max(1);
    let nextfit = sizing::<swiotlb::NextFit>(&p, &ops, Policy::NextFit, demand, nareas, opts)?;
    let fast = sizing::<swiotlb::Fast>(&p, &ops, Policy::Fast, demand, nareas, opts)?;
    let timeline = if opts.replay.timeline {
        let r = nextfit.recommended;
        candidate::<swiotlb::NextFit>(&p, &ops, r.nslabs, r.nareas, true)?.1
    } else {
        None
    };
    let dynamic = dynamic(&p, &ops, nareas, nextfit.recommended.nslabs * 2)?;
    let mut kernel_failures = 0;
    for op in &ops {
        if let Op::Resolve { ok: false, .. } = op {
            kernel_failures += 1;
        }
    }
    let mut notes = p.notes.clone();
    if kernel_failures > 0 {
        notes.push(format!(
            "the kernel failed {kernel_failures} bounced map(s): a larger pool would have held \
             each for as long as its I/O took, which the trace cannot show (no unmap follows a \
             failed map); the sizes here hold them only while the kernel tried, so leave \
             room above the answer"
        ));
    }
    let search = format!(
        "the trace's live bounces held at most {demand} slots at once (replayed on a pool too \
         large to fail), so no smaller pool can work; every pool Linux can build with {nareas} \
         area(s) from there up was replayed in turn, and the first without a failure is the \
         answer; the next larger ones were replayed too{}; for any multiple of 128 slots, a \
         bisection between {demand} and the answer, then the sizes just below it replayed \
         one by one",
        if nextfit.non_monotone || fast.non_monotone {
            ", and one of them FAILED: the answer works by luck of placement, prefer the recommendation"
        } else {
            " and pass"
        }
    );
    Ok(SizeReport {
        lines: p.survey.lines,
        era: p.era,
        mappings: ops.iter().filter(|o| matches!(o, Op::Map { .. })).count() as u64,
        demand_slots: demand,
        nareas,
        nareas_source,
        kernel_nslabs: log.nslabs,
        kernel_failures,
        margin_percent: opts.margin_percent,
        nextfit,
        fast,
        dynamic,
        search,
        notes,
        timeline,
    })
}

/// Our growing tlb on the trace: a 4 MiB first pool, 4 MiB steps up to
/// `max_slots`, pools given back after a second empty (trace time), the
/// fast policy (its default).
fn dynamic(
    p: &Prepared,
    ops: &[Op],
    nareas: u32,
    max_slots: u64,
) -> Result<DynamicAdvice, ReplayError> {
    let start = (4u64 << 20) >> IO_TLB_SHIFT;
    let plan = GrowPlan {
        grow_by: start as u32,
        max_slots: max_slots.max(start),
        idle_ns: 1_000_000_000,
    };
    let g = Geometry {
        nslabs: start,
        nareas,
        ..p.geometry
    };
    let mut exec = new_exec::<swiotlb::Fast>(p, g, Some(plan), false)?;
    for op in ops {
        exec.op(op);
    }
    exec.finish();
    let growth = exec.growth.clone().unwrap_or_default();
    Ok(DynamicAdvice {
        start_slots: growth.start_slots,
        grow_by_slots: growth.grow_by_slots,
        max_slots: growth.max_slots,
        idle_ms: growth.idle_ms,
        config: format!(
            "GrowConfig::new({} << 20, {} << 20)",
            (start << IO_TLB_SHIFT) >> 20,
            (plan.max_slots << IO_TLB_SHIFT) >> 20
        ),
        failures: exec.failures,
        peak_slots: growth.peak_slots.max(growth.start_slots),
        pools_added: growth.pools_added,
        pools_removed: growth.pools_removed,
        events: growth.events,
    })
}
