//! `swiotlb replay` and `swiotlb size`: a kernel's DMA trace replayed
//! through the real allocator (the `swiotlb-trace` crate's replay), and
//! the smallest `swiotlb=` with which it has no failure.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, IsTerminal};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use swiotlb_trace::replay::{
    self, Era, GeometrySource, Input, KernelLog, Options, Policy, Report, SizeOptions, SizeReport,
    Sizing,
};

use crate::error::Error;
use crate::units::{human, parse_number};

/// The trace options `replay` and `size` share.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct TraceArgs {
    /// The trace: ftrace `trace` or `trace_pipe` text, or `trace-cmd
    /// report` output, plain or gzip.
    #[arg(value_name = "TRACE")]
    trace: PathBuf,
    /// The kernel log of the traced boot (`dmesg`): the pool's address,
    /// size and areas, and its "swiotlb buffer is full" messages.
    #[arg(long, value_name = "FILE")]
    dmesg: Option<PathBuf>,
    /// A device's `min_align_mask`, instead of the one inferred from its
    /// bounces (repeatable): `--min-align 0000:01:00.0=0xfff`.
    #[arg(long = "min-align", value_name = "DEV=MASK", value_parser = parse_min_align)]
    min_align: Vec<(String, u64)>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Draw used slots over time and the pool at its peak, as SVG.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

/// Arguments of `swiotlb replay`.
#[derive(clap::Args)]
pub(crate) struct ReplayArgs {
    #[command(flatten)]
    trace: TraceArgs,
    /// Slots in the pool, as a `swiotlb=` slot count (Linux rounds it)
    /// [default: the kernel log's pool, else 32768].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    nslabs: Option<u64>,
    /// Areas [default: the kernel log's, else one per CPU of the trace].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    nareas: Option<u32>,
    /// The allocation policy: `nextfit` (Linux's, slot for slot) or
    /// `fast` (ours).
    #[arg(long, value_enum, default_value = "nextfit")]
    policy: PolicyName,
}

/// Arguments of `swiotlb size`.
#[derive(clap::Args)]
pub(crate) struct SizeArgs {
    #[command(flatten)]
    trace: TraceArgs,
    /// Areas of every pool tried [default: the kernel log's, else one per
    /// CPU of the trace].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    nareas: Option<u32>,
    /// Free slots the recommendation keeps at the replay's peak, in percent.
    #[arg(long, value_name = "PERCENT", default_value_t = 25,
          value_parser = clap::value_parser!(u32).range(0..100))]
    margin: u32,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum PolicyName {
    Nextfit,
    Fast,
}

fn parse_min_align(s: &str) -> Result<(String, u64), String> {
    let (dev, mask) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("`{s}` is not DEV=MASK (like 0000:01:00.0=0xfff)"))?;
    let m = parse_number(mask).ok_or_else(|| format!("`{mask}` is not a number"))?;
    if dev.is_empty() {
        return Err(format!("`{s}` names no device"));
    }
    if m & m.wrapping_add(1) != 0 {
        return Err(format!("{mask} is not 2^n - 1 (like 0xfff)"));
    }
    Ok((dev.to_string(), m))
}

/// A trace file read with a progress bar on standard error (hidden when
/// it is not a terminal, or with --json).
struct TraceFile<'a> {
    path: &'a Path,
    bar: ProgressBar,
}

impl<'a> TraceFile<'a> {
    fn new(path: &'a Path, quiet: bool) -> Result<Self, Error> {
        let len = std::fs::metadata(path)
            .map_err(|source| Error::Read {
                path: path.into(),
                source,
            })?
            .len();
        let target = if quiet || !io::stderr().is_terminal() {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(Some(len), target);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>8} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        Ok(TraceFile { path, bar })
    }
}

impl Input for TraceFile<'_> {
    fn open(&self) -> io::Result<Box<dyn BufRead + '_>> {
        let f = std::fs::File::open(self.path)?;
        self.bar.reset();
        self.bar.set_message(if self.bar.message().is_empty() {
            "survey"
        } else {
            "replay"
        });
        Ok(Box::new(BufReader::with_capacity(
            1 << 16,
            self.bar.wrap_read(f),
        )))
    }
}

fn kernel_log(path: Option<&PathBuf>) -> Result<Option<KernelLog>, Error> {
    let Some(path) = path else { return Ok(None) };
    replay::read_kernel_log(path.as_path())
        .map(Some)
        .map_err(|e| Error::Trace {
            path: path.clone(),
            message: e.to_string(),
        })
}

fn options(t: &TraceArgs) -> Result<Options, Error> {
    let mut o = Options::default();
    o.kernel_log = kernel_log(t.dmesg.as_ref())?;
    o.min_align = t.min_align.clone();
    o.timeline = t.plot.is_some();
    Ok(o)
}

fn trace_error(path: &Path, e: replay::ReplayError) -> Error {
    Error::Trace {
        path: path.into(),
        message: e.to_string(),
    }
}

/// `replay`'s JSON: the trace's name, then the report.
#[derive(Serialize)]
struct ReplayJson<'a> {
    trace: String,
    #[serde(flatten)]
    report: &'a Report,
}

/// Runs `swiotlb replay`.
pub(crate) fn run_replay(args: &ReplayArgs) -> Result<(), Error> {
    let t = &args.trace;
    let mut o = options(t)?;
    o.nslabs = args.nslabs;
    o.nareas = args.nareas;
    o.policy = match args.policy {
        PolicyName::Nextfit => Policy::NextFit,
        PolicyName::Fast => Policy::Fast,
    };
    let file = TraceFile::new(&t.trace, t.json)?;
    let r = replay::replay(&file, &o).map_err(|e| trace_error(&t.trace, e))?;
    file.bar.finish_and_clear();
    if let (Some(path), Some(tl)) = (&t.plot, &r.timeline) {
        crate::plot_trace::write(path, &t.trace, &r, tl)?;
    }
    let out = if t.json {
        let mut s = serde_json::to_string_pretty(&ReplayJson {
            trace: t.trace.display().to_string(),
            report: &r,
        })?;
        s.push('\n');
        s
    } else {
        replay_text(&t.trace, &r)
    };
    crate::simulate::print_report(&out)
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".into();
    }
    let p = part as f64 * 100.0 / whole as f64;
    if p > 0.0 && p < 1.0 {
        format!("{p:.2} %")
    } else {
        format!("{p:.1} %")
    }
}

fn source(s: GeometrySource) -> &'static str {
    match s {
        GeometrySource::Options => "from the options",
        GeometrySource::Dmesg => "from the kernel log",
        GeometrySource::Default => "Linux's default",
    }
}

fn slots(n: u64) -> String {
    format!("{n} slots ({})", human(n << 11))
}

fn replay_text(path: &Path, r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "replay of {}: {} lines, {} events, {} bounce(s) ({})",
        path.display(),
        r.lines,
        r.events,
        r.mappings,
        human(r.bytes)
    );
    let base = r.pool_base.map_or(String::new(), |b| format!(" at {b:#x}"));
    let _ = writeln!(
        s,
        "pool:      {} in {} area(s), {}{base}; policy {}",
        slots(r.io_tlb_nslabs),
        r.io_tlb_nareas,
        source(r.geometry_source),
        r.policy.name()
    );
    match r.io_tlb_used_hiwater {
        Some(h) => {
            let _ = writeln!(
                s,
                "io_tlb_used_hiwater: {h} slots ({} of the pool); {} still held at the end",
                pct(h, r.io_tlb_nslabs),
                r.io_tlb_used_at_end
            );
        }
        None => {
            let _ = writeln!(s, "io_tlb_used_hiwater: unknown (see the notes)");
        }
    }
    let c = r.failures_compared;
    let _ = writeln!(
        s,
        "failures:  replay {}, kernel {} (both {}, only the kernel {}, only the replay {})",
        r.failures, r.kernel_failures, c.both, c.only_kernel, c.only_replay
    );
    if let Some(n) = r.kernel_full_messages {
        let _ = writeln!(
            s,
            "           kernel log: {n} \"swiotlb buffer is full\" message(s) (rate limited)"
        );
    }
    if let Some(p) = r.placed_exactly {
        let _ = writeln!(
            s,
            "placement: {} of {} bounces at the kernel's own address ({})",
            p.exact,
            p.compared,
            pct(p.exact, p.compared)
        );
        if p.outside_pool > 0 {
            let _ = writeln!(
                s,
                "           {} bounces the kernel placed outside its boot pool (a pool it grew, \
                 CONFIG_SWIOTLB_DYNAMIC): not modelled",
                p.outside_pool
            );
        }
    }
    if !r.markers.is_empty() {
        let _ = writeln!(
            s,
            "markers (used at the marker; highest use until the next):"
        );
        for m in &r.markers {
            let _ = writeln!(
                s,
                "  line {:>8}  {:>6} {:>6}  {}",
                m.line, m.io_tlb_used, m.io_tlb_used_hiwater, m.text
            );
        }
    }
    if !r.per_device.is_empty() {
        let _ = writeln!(s, "devices:");
        for d in &r.per_device {
            let off = d
                .dev_addr_offset
                .filter(|o| *o != 0)
                .map_or(String::new(), |o| {
                    format!(", device sees originals at +{o:#x}")
                });
            let _ = writeln!(
                s,
                "  {:<14} {:>8} bounce(s) {:>11}  hiwater {:>6}  failures {}/{} (replay/kernel)  min_align {:#x} ({}){off}",
                d.name,
                d.mappings,
                human(d.bytes),
                d.hiwater,
                d.failures,
                d.kernel_failures,
                d.min_align_mask,
                d.min_align_source
            );
        }
    }
    let u = r.unpaired;
    let odd = [
        (u.bounces, "bounces never settled by a map event"),
        (
            u.unmaps,
            "unmaps of mappings made before the trace (or lost)",
        ),
        (u.loose_pairs, "map events paired by size alone"),
        (u.other_map_errors, "failed maps that bounced nothing"),
        (
            u.reused_addresses,
            "bounce addresses mapped again while live (lost unmaps)",
        ),
        (u.lost_notes, "lost-events notes"),
        (r.malformed.count, "malformed lines, skipped"),
    ];
    for (n, what) in odd {
        if n > 0 {
            let _ = writeln!(s, "note:      {n} {what}");
        }
    }
    for e in &r.malformed.first {
        let _ = writeln!(s, "           {e}");
    }
    for n in &r.notes {
        let _ = writeln!(s, "note:      {n}");
    }
    s
}

/// `size`'s JSON: the trace's name, then the report.
#[derive(Serialize)]
struct SizeJson<'a> {
    trace: String,
    #[serde(flatten)]
    report: &'a SizeReport,
}

/// Runs `swiotlb size`.
pub(crate) fn run_size(args: &SizeArgs) -> Result<(), Error> {
    let t = &args.trace;
    let mut o = SizeOptions::default();
    o.replay = options(t)?;
    o.replay.nareas = args.nareas;
    o.margin_percent = args.margin;
    let file = TraceFile::new(&t.trace, t.json)?;
    let r = replay::size(&file, &o).map_err(|e| trace_error(&t.trace, e))?;
    file.bar.finish_and_clear();
    if let (Some(path), Some(tl)) = (&t.plot, &r.timeline) {
        crate::plot_trace::write_size(path, &t.trace, &r, tl)?;
    }
    let out = if t.json {
        let mut s = serde_json::to_string_pretty(&SizeJson {
            trace: t.trace.display().to_string(),
            report: &r,
        })?;
        s.push('\n');
        s
    } else {
        size_text(&t.trace, &r)
    };
    crate::simulate::print_report(&out)
}

fn sizing_text(s: &mut String, z: &Sizing, margin: u32) {
    let tried: Vec<String> = z
        .tried
        .iter()
        .map(|c| format!("{} ({} failed)", c.nslabs, c.failures))
        .collect();
    let _ = writeln!(
        s,
        "  smallest without a failure: {} x {} area(s), peak {} ({})",
        slots(z.smallest.nslabs),
        z.smallest.nareas,
        z.smallest.io_tlb_used_hiwater,
        pct(z.smallest.io_tlb_used_hiwater, z.smallest.nslabs)
    );
    let _ = writeln!(
        s,
        "  with {margin} % free at the peak:  {} (peak {})",
        slots(z.recommended.nslabs),
        pct(z.recommended.io_tlb_used_hiwater, z.recommended.nslabs)
    );
    let _ = writeln!(s, "  pools replayed: {}", tried.join(", "));
    if z.non_monotone {
        let _ = writeln!(
            s,
            "  a pool larger than the smallest FAILED: that size works by luck of placement"
        );
    }
    let check = if z.exhaustive {
        "every size between the demand and it fails".to_string()
    } else {
        format!("the {} sizes just below it fail", z.checked_below)
    };
    let _ = writeln!(
        s,
        "  any multiple of 128 slots (our library builds any): {} ({check})",
        slots(z.smallest_any.nslabs),
    );
}

fn size_text(path: &Path, r: &SizeReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "size for {}: {} bounces; at most {} live at once",
        path.display(),
        r.mappings,
        slots(r.demand_slots)
    );
    if let Some(k) = r.kernel_nslabs {
        let _ = writeln!(
            s,
            "the traced kernel had {}; it failed {} bounced map(s)",
            slots(k),
            r.kernel_failures
        );
    }
    let _ = writeln!(
        s,
        "\nLinux ({} area(s), {}):",
        r.nareas,
        source(r.nareas_source)
    );
    sizing_text(&mut s, &r.nextfit, r.margin_percent);
    let _ = writeln!(s, "  kernel command line:  {}", r.nextfit.swiotlb);
    let _ = writeln!(s, "\nour fast policy, same trace:");
    sizing_text(&mut s, &r.fast, r.margin_percent);
    let d = &r.dynamic;
    let _ = writeln!(
        s,
        "\nour growing tlb instead ({}): start {}, grow by {}, at most {}",
        d.config,
        slots(d.start_slots),
        slots(d.grow_by_slots),
        slots(d.max_slots)
    );
    let _ = writeln!(
        s,
        "  peak {}, {} pool(s) added, {} given back after {} ms empty, {} failure(s)",
        slots(d.peak_slots),
        d.pools_added,
        d.pools_removed,
        d.idle_ms,
        d.failures
    );
    for e in d.events.iter().take(6) {
        let _ = writeln!(
            s,
            "  {:>10.6} s  {} {} -> {} in all",
            e.t_ns as f64 / 1e9,
            e.what,
            slots(e.slots),
            slots(e.total_slots)
        );
    }
    if d.events.len() > 6 {
        let _ = writeln!(
            s,
            "  ... {} more (--json lists them all)",
            d.events.len() - 6
        );
    }
    let _ = writeln!(s, "\nhow: {}", r.search);
    for n in &r.notes {
        let _ = writeln!(s, "note: {n}");
    }
    if r.era == Era::MapsOnly {
        let _ = writeln!(
            s,
            "note: bounces were recognised by address (no swiotlb_bounced events)"
        );
    }
    s
}
