//! Replays of kernel traces through the real allocator: where Linux put
//! every bounce, how full its pool got, and which pool would have been
//! enough.
//!
//! A replay reads the trace twice. The first pass ([`survey`]) learns
//! what no event prints: each device's offset between its view of an
//! original and the CPU's (the encryption bit of an AMD SEV guest, a DMA
//! range offset), and its `min_align_mask` (NVMe: `0xfff`), inferred from
//! the successful maps as the largest `2^k - 1` under which every bounce
//! address kept its original's low bits, when some original had a set
//! bit there. The second pass pairs the events by Linux's order ([`pair`])
//! and drives a [`swiotlb::sim::SlotPool`] of the kernel's geometry with
//! Linux's own policy ([`swiotlb::NextFit`]) by default, each bounce
//! starting its search in the area of the CPU that mapped it.
//!
//! Kernels before 6.12 trace only `swiotlb_bounced`: such a trace shows
//! how much was bounced, never when it was released, and a replay says so
//! instead of guessing a high-water mark ([`Era::BouncedOnly`]).
//!
//! ```
//! use swiotlb_trace::replay::{replay, Options};
//!
//! let trace = "\
//!  fio-1 [001] ..... 10.000000: swiotlb_bounced: dev_name: nvme0 dma_mask=ffffffff dev_addr=10000a00 size=6000 NORMAL
//!  fio-1 [001] ..... 10.000001: dma_map_page: nvme0 dir=TO_DEVICE dma_addr=bbe00a00 size=6000 phys_addr=10000a00 attrs=
//!  fio-1 [001] ..... 10.000002: tracing_mark_write: done
//!  fio-1 [001] ..... 10.000003: dma_unmap_page: nvme0 dir=TO_DEVICE dma_addr=bbe00a00 size=6000 attrs=
//! ";
//! let r = replay(trace, &Options::default()).unwrap();
//! // 6000 bytes at offset 0xa00: four 2 KiB slots.
//! assert_eq!(r.io_tlb_used_hiwater, Some(4));
//! assert_eq!(r.markers[0].io_tlb_used, 4);
//! assert_eq!(r.io_tlb_used_at_end, 0);
//! ```

mod exec;
mod input;
mod pair;
mod report;
mod size;
mod survey;

use std::collections::HashMap;

pub use input::{Input, Malformed, ReadError};
pub use pair::Unpaired;
pub use report::{
    Compared, DeviceReport, Era, GeometrySource, Growth, GrowthEvent, Marker, Placement, Policy,
    Report, Timeline,
};
pub use size::{size, Candidate, DynamicAdvice, SizeOptions, SizeReport, Sizing};

use exec::{Exec, GrowPlan};
use pair::{Devices, Op, Pairer};
use survey::Survey;
use swiotlb::config::SwiotlbParam;

use crate::event::{Message, Record};
use crate::parser::Format;

/// Linux's default pool: 32768 slots of 2 KiB (64 MiB).
pub const DEFAULT_NSLABS: u64 = 32768;

/// Where the pool is seen when the kernel log does not say: 4 GiB, a
/// multiple of every alignment and segment a map can ask for.
const UNKNOWN_BASE: u64 = 1 << 32;

/// What a kernel log says about the pool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KernelLog {
    /// The pool's first byte (`mapped [mem START-END]`).
    pub base: Option<u64>,
    /// Its slots, from the same line.
    pub nslabs: Option<u64>,
    /// `area num N.`
    pub nareas: Option<u32>,
    /// "swiotlb buffer is full" messages.
    pub full_messages: u64,
}

/// Reads the swiotlb lines of a kernel log (`dmesg`, `journalctl -k`).
///
/// # Errors
/// [`ReadError`] if it cannot be read.
pub fn read_kernel_log(input: &(impl Input + ?Sized)) -> Result<KernelLog, ReadError> {
    let mut log = KernelLog::default();
    input::each_record(input, Format::Dmesg, None, |rec| {
        let Record::Kernel(k) = rec else { return };
        match k.message {
            Message::Mapped { start, end, .. } => {
                // The boot pool is the first one logged.
                if log.base.is_none() {
                    log.base = Some(start.0);
                    log.nslabs =
                        Some((end.0.saturating_sub(start.0) + 1) >> swiotlb::config::IO_TLB_SHIFT);
                }
            }
            Message::Areas(n) => log.nareas = Some(n),
            Message::Full { .. } => log.full_messages += 1,
        }
    })?;
    Ok(log)
}

/// How to replay.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Options {
    /// Slots of the pool, as a `swiotlb=` slot count (rounded as Linux
    /// rounds it); else the kernel log's, else Linux's default.
    pub nslabs: Option<u64>,
    /// Areas; else the kernel log's, else one per CPU of the trace.
    pub nareas: Option<u32>,
    /// The kernel log of the traced boot.
    pub kernel_log: Option<KernelLog>,
    /// The policy driven.
    pub policy: Policy,
    /// `min_align_mask` per device name, instead of the inferred one.
    pub min_align: Vec<(String, u64)>,
    /// Keep used slots over time ([`Report::timeline`]).
    pub timeline: bool,
}

impl Options {
    /// Defaults with `policy`.
    pub fn with_policy(policy: Policy) -> Self {
        Options {
            policy,
            ..Options::default()
        }
    }
}

/// A replay could not run.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReplayError {
    /// The trace could not be read.
    Read(ReadError),
    /// The pool the options describe cannot be built.
    Pool(swiotlb::Error),
    /// A `min_align` override is not `2^n - 1`.
    BadMinAlign {
        /// The device named.
        device: String,
        /// The mask given.
        mask: u64,
    },
    /// Sizing needs to know when bounces were released, and this trace
    /// cannot tell.
    CannotSize(Era),
    /// No pool up to the largest tried holds the trace.
    TooLarge {
        /// Slots of the largest pool tried.
        nslabs: u64,
    },
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayError::Read(e) => write!(f, "{e}"),
            ReplayError::Pool(e) => write!(f, "cannot build the pool: {e}"),
            ReplayError::BadMinAlign { device, mask } => {
                write!(
                    f,
                    "min_align_mask {mask:#x} of {device} is not 2^n - 1 (like 0xfff)"
                )
            }
            ReplayError::CannotSize(Era::BouncedOnly) => f.write_str(
                "this trace has swiotlb_bounced but no dma_map_*/dma_unmap_* events \
                 (a kernel before 6.12, or the dma events not enabled): it shows how much \
                 was bounced, not when it was released, so no pool size can be derived from it",
            ),
            ReplayError::CannotSize(_) => f.write_str(
                "this trace has no bounces to size a pool for (no swiotlb_bounced events, \
                 and no kernel log giving the pool's address to recognise bounce addresses by)",
            ),
            ReplayError::TooLarge { nslabs } => write!(
                f,
                "even a pool of {nslabs} slots ({} MiB) fails this trace",
                nslabs >> 9
            ),
        }
    }
}

impl std::error::Error for ReplayError {}

impl From<ReadError> for ReplayError {
    fn from(e: ReadError) -> Self {
        ReplayError::Read(e)
    }
}

/// The pool a replay builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geometry {
    nslabs: u64,
    nareas: u32,
    source: GeometrySource,
    base: Option<u64>,
}

fn geometry(opts: &Options, cpus: u32) -> (Geometry, Vec<String>) {
    let log = opts.kernel_log.clone().unwrap_or_default();
    let mut notes = Vec::new();
    let cpus = cpus.max(1);
    let g = if opts.nslabs.is_some() || opts.nareas.is_some() {
        let asked = SwiotlbParam {
            nslabs: opts.nslabs.or(log.nslabs),
            nareas: opts.nareas.or(log.nareas),
            ..SwiotlbParam::default()
        };
        // Read back as one `swiotlb=N,A` value, so that Linux's rounding
        // of the slot count by the area count applies.
        let r = SwiotlbParam::parse(&asked.to_string()).resolve(cpus);
        if opts.nslabs.is_some_and(|n| n != r.nslabs) {
            notes.push(format!(
                "swiotlb={} gives a pool of {} slots in Linux (rounded up); the replay uses that",
                opts.nslabs.unwrap_or_default(),
                r.nslabs
            ));
        }
        Geometry {
            nslabs: r.nslabs,
            nareas: r.nareas,
            source: GeometrySource::Options,
            base: log.base,
        }
    } else if let Some(nslabs) = log.nslabs {
        // The pool the kernel built, as it built it.
        Geometry {
            nslabs,
            nareas: log.nareas.unwrap_or(cpus),
            source: GeometrySource::Dmesg,
            base: log.base,
        }
    } else {
        let r = SwiotlbParam::default().resolve(cpus);
        notes.push(format!(
            "no pool size given and no kernel log: Linux's default pool ({} slots, {} areas for the {cpus} CPUs of the trace)",
            r.nslabs, r.nareas
        ));
        Geometry {
            nslabs: r.nslabs,
            nareas: r.nareas,
            source: GeometrySource::Default,
            base: log.base,
        }
    };
    (g, notes)
}

fn era(s: &Survey, base_known: bool) -> Era {
    match (s.bounced > 0, s.dma_events > 0) {
        (true, true) => Era::Full,
        (true, false) => Era::BouncedOnly,
        (false, true) if base_known => Era::MapsOnly,
        _ => Era::Empty,
    }
}

/// The devices with their facts, overrides applied.
fn devices(
    s: &Survey,
    overrides: &[(String, u64)],
) -> Result<(Devices, Vec<&'static str>), ReplayError> {
    for (device, mask) in overrides {
        if mask & mask.wrapping_add(1) != 0 {
            return Err(ReplayError::BadMinAlign {
                device: device.clone(),
                mask: *mask,
            });
        }
    }
    let mut map = HashMap::new();
    let mut sources = Vec::new();
    for (i, (d, ds)) in s.devices.iter().enumerate() {
        let mut l = ds.learned();
        let source = match overrides.iter().rev().find(|(n, _)| d == n.as_str()) {
            Some((_, m)) => {
                l.min_align = *m;
                "option"
            }
            None if l.min_align != 0 => "inferred",
            None => "none",
        };
        sources.push(source);
        map.insert(d.clone(), (i as u16, l));
    }
    Ok((map, sources))
}

/// Everything both passes give, before any pool: the operations and what
/// the report needs besides the allocator's side.
struct Prepared {
    survey: Survey,
    geometry: Geometry,
    era: Era,
    notes: Vec<String>,
    pairer: Pairer,
    sources: Vec<&'static str>,
}

fn prepare(input: &(impl Input + ?Sized), opts: &Options) -> Result<Prepared, ReplayError> {
    let survey = survey::survey(input)?;
    let (geometry, mut notes) = geometry(opts, survey.cpus);
    let era = era(&survey, geometry.base.is_some());
    let (devices, sources) = devices(&survey, &opts.min_align)?;
    let fallback = match (era, geometry.base) {
        (Era::MapsOnly, Some(b)) => {
            Some((b, b + (geometry.nslabs << swiotlb::config::IO_TLB_SHIFT)))
        }
        _ => None,
    };
    match era {
        Era::Full => {}
        Era::BouncedOnly => notes.push(
            "this trace has swiotlb_bounced but no dma_map_*/dma_unmap_* events (a kernel \
             before 6.12, or the dma events not enabled): it shows how much was bounced, \
             not when it was released, so there is no high-water mark to report"
                .into(),
        ),
        Era::MapsOnly => notes.push(
            "no swiotlb_bounced events: maps whose address falls in the pool the kernel log \
             names are taken as bounces, placed when their dma_map event came"
                .into(),
        ),
        Era::Empty => notes.push("no swiotlb bounces in this trace".into()),
    }
    if geometry.base.is_none() {
        notes.push(
            "the pool's address is unknown (no kernel log): placements are not compared \
             with the kernel's"
                .into(),
        );
    }
    Ok(Prepared {
        survey,
        geometry,
        era,
        notes,
        pairer: Pairer::new(devices, fallback),
        sources,
    })
}

/// The operations of a prepared trace, in order.
fn schedule(input: &(impl Input + ?Sized), p: &mut Prepared) -> Result<Vec<Op>, ReplayError> {
    let mut ops = Vec::new();
    input::each_record(input, Format::Trace, None, |rec| {
        p.pairer.record(rec, &mut |op| ops.push(op));
    })?;
    p.pairer.finish();
    Ok(ops)
}

/// Replays `input` as `opts` say.
///
/// # Errors
/// [`ReplayError::Read`] if the trace cannot be read;
/// [`ReplayError::Pool`] for a pool the options cannot build;
/// [`ReplayError::BadMinAlign`] for a bad override.
pub fn replay(input: &(impl Input + ?Sized), opts: &Options) -> Result<Report, ReplayError> {
    let mut p = prepare(input, opts)?;
    match opts.policy {
        Policy::NextFit => run::<swiotlb::NextFit>(input, opts, &mut p),
        Policy::Fast => run::<swiotlb::Fast>(input, opts, &mut p),
    }
}

fn new_exec<P: swiotlb::Policy>(
    p: &Prepared,
    g: Geometry,
    plan: Option<GrowPlan>,
    timeline: bool,
) -> Result<Exec<P>, ReplayError> {
    let nslabs = u32::try_from(g.nslabs).map_err(|_| {
        ReplayError::Pool(swiotlb::Error::InvalidPool {
            base: swiotlb::PhysAddr(g.base.unwrap_or(UNKNOWN_BASE)),
            problem: swiotlb::error::PoolProblem::TooManySlots,
        })
    })?;
    let min_align = p
        .pairer
        .devices()
        .iter()
        .map(|(_, l)| l.min_align)
        .collect();
    Exec::new(
        nslabs,
        g.nareas,
        g.base.unwrap_or(UNKNOWN_BASE),
        g.base.is_some(),
        min_align,
        plan,
        timeline,
    )
    .map_err(ReplayError::Pool)
}

fn run<P: swiotlb::Policy>(
    input: &(impl Input + ?Sized),
    opts: &Options,
    p: &mut Prepared,
) -> Result<Report, ReplayError> {
    let g = p.geometry;
    let mut exec = new_exec::<P>(p, g, None, opts.timeline)?;
    let count_only = p.era == Era::BouncedOnly;
    let pairer = &mut p.pairer;
    input::each_record(input, Format::Trace, None, |rec| {
        pairer.record(rec, &mut |op| {
            if count_only {
                // Nothing is ever released: count, do not place.
                if let Op::Map { dev, size, .. } = op {
                    exec.count_only(dev, size);
                }
                if matches!(op, Op::Marker { .. }) {
                    exec.op(&op);
                }
            } else {
                exec.op(&op);
            }
        });
    })?;
    pairer.finish();
    Ok(report(p, opts.policy, &mut exec, opts))
}

fn report<P: swiotlb::Policy>(
    p: &Prepared,
    policy: Policy,
    exec: &mut Exec<P>,
    opts: &Options,
) -> Report {
    let timeline = exec.finish();
    let g = p.geometry;
    let stats = exec.engine_stats();
    if exec.growth.is_none() && p.era != Era::BouncedOnly {
        // The engine's exact pool-wide mark and the replay's own count.
        debug_assert_eq!(stats.io_tlb_used_hiwater, exec.hiwater);
    }
    let per_device = p
        .pairer
        .devices()
        .into_iter()
        .enumerate()
        .map(|(i, (d, l))| {
            let c = exec.devs.get(i).copied().unwrap_or_default();
            DeviceReport {
                name: d.to_string(),
                min_align_mask: l.min_align,
                min_align_source: p.sources.get(i).copied().unwrap_or("none"),
                dev_addr_offset: l.delta,
                mappings: c.mappings,
                bytes: c.bytes,
                hiwater: c.hiwater,
                failures: c.failures,
                kernel_failures: c.kernel_failures,
            }
        })
        // Devices that mapped but never bounced are not the pool's.
        .filter(|d: &DeviceReport| d.mappings > 0 || d.kernel_failures > 0)
        .collect();
    let known = p.era != Era::BouncedOnly;
    Report {
        lines: p.survey.lines,
        events: p.survey.events,
        era: p.era,
        mappings: exec.mappings,
        bytes: exec.bytes,
        policy,
        io_tlb_nslabs: g.nslabs,
        io_tlb_nareas: exec_nareas(exec),
        geometry_source: g.source,
        pool_base: g.base,
        io_tlb_used_hiwater: known.then_some(exec.hiwater),
        io_tlb_used_at_end: exec.used,
        failures: exec.failures,
        kernel_failures: exec.kernel_failures,
        kernel_full_messages: opts.kernel_log.as_ref().map(|l| l.full_messages),
        failures_compared: exec.compared,
        placed_exactly: (g.base.is_some() && known).then_some(exec.placement),
        markers: exec.markers.clone(),
        per_device,
        unpaired: p.pairer.unpaired,
        malformed: p.survey.malformed.clone(),
        growth: exec.growth.clone(),
        notes: p.notes.clone(),
        timeline,
    }
}

fn exec_nareas<P: swiotlb::Policy>(exec: &Exec<P>) -> u32 {
    exec.first_pool().nareas()
}
