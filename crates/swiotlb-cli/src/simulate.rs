//! `swiotlb simulate`: runs an operations script through the real engine
//! and reports where every mapping landed and the pool's statistics; or,
//! with `--profile`, runs a synthetic workload on a growing tlb
//! ([`profile`]).
//!
//! The pool is a heap pool driven by [`swiotlb::sim::Simulator`]: every
//! mapping has a real original buffer, every copy the engine makes is
//! checked against Linux's semantics, and placements are those of a real
//! kernel pool at a fixed device address, 4 GiB (`swiotlb::sim::SIM_DMA_BASE`,
//! the same on every run and machine; offsets into the pool are reported).
//! Its `io_tlb_used_hiwater` is Linux's exact pool-wide mark on any number
//! of areas (the simulator keeps `swiotlb::Hiwater::Exact`).

mod profile;

use crate::error::Error;
use crate::plot::{self, Recorder, Timeline};
use crate::units::{human, parse_number, parse_radix, parse_size, SizeError};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Read, Write as _};
use std::path::{Path, PathBuf};

use serde::Serialize;
use swiotlb::sim::{MapParams, SimError, Simulator};
use swiotlb::{Direction, Fast, NextFit, PhysAddr, Policy, PoolConfig, Stats};

/// The script grammar, shown by `swiotlb simulate --help`.
const SCRIPT_HELP: &str = "\
Script: one operation per line; `#` starts a comment, blank lines are skipped.

  map ID SIZE [orig=HEX] [min_align=HEX] [alloc_align=HEX] [cpu=N] [dir=to|from|bidi]
  unmap ID
  sync ID OFFSET LEN cpu|device

ID is a name made of letters, digits and `_ - . : /`. SIZE, OFFSET and LEN
are byte counts in the grammar of every size option: decimal or 0x hex,
optionally followed by a unit, each a power of two: B, K or KiB (1024),
M or MiB (1024^2), G or GiB (1024^3), T or TiB (1024^4), in any case
(64K, 0x800, 1MiB); SIZE is at most 1 GiB. HEX values are hexadecimal,
`0x` optional. `_` may separate digits. Defaults: orig=0 (no min-align check, as Linux), no masks,
cpu=0 (the search starts in area cpu % nareas), dir=bidi.

A `# args:` line before the first operation gives the script's own pool
options, for example `# args: --nslabs 128 --nareas 2 --policy nextfit`
(only these three); an option on the command line wins over it.

A map the engine refuses (pool full, too large, impossible alignment) is
reported as that map's result; an unmap or sync of an id whose map failed
is skipped. A bad line, a map of an id already mapped, or an unmap or sync
of an id never mapped stops the run with exit code 2.

Profiles (--profile NAME, instead of --ops): worker threads, one device
each, map real heap buffers of seeded log-uniform sizes from 4 KiB to
256 KiB through a growing tlb (--start, --grow-by, --max), check every
byte after the unmap, and finally idle: the clock skips forward one idle
time per step (no real time passes) while the tlb gives pools back.

  burst   ramp to a 256 MiB live set, hold it, release everything, idle
  steady  warm up (to 128 MiB and back to 32 MiB, until a round needs no
          growth), oscillate between 32 and 96 MiB for 16 cycles (8 idle
          times of simulated time), release, idle; pools_added_after_warmup
          and pools_removed_after_warmup show the hysteresis

Example: swiotlb simulate --profile burst --start 1MiB --max 512MiB --json";

/// Arguments of `swiotlb simulate`.
#[derive(clap::Args)]
#[command(after_long_help = SCRIPT_HELP)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["ops", "profile"])))]
pub(crate) struct Args {
    /// The operations script; `-` reads standard input. A `# args:` line
    /// before its first operation may set --nslabs, --nareas and --policy;
    /// options given here win over it.
    #[arg(long, value_name = "FILE")]
    ops: Option<String>,
    #[command(flatten)]
    pool: PoolArgs,
    #[command(flatten)]
    workload: profile::ProfileArgs,
    /// Print one JSON object instead of a table: `{"ops": [...], "stats":
    /// {...}}` for a script, flat counters for a profile.
    #[arg(long)]
    json: bool,
    /// Also draw the run as an SVG picture: slots held over the run with
    /// the pool's size, its high-water mark and the failed maps; for a
    /// script, the pool's occupancy at the peak below (x: the script's
    /// line); for a profile, phases as markers (x: seconds on the tlb's
    /// clock).
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

/// The pool a script runs on: options of `swiotlb simulate`, and the only
/// options a script's `# args:` line may give.
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct PoolArgs {
    /// Slots in the pool, 2 KiB each [default: 32768, Linux's 64 MiB].
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub nslabs: Option<u32>,
    /// Areas wanted, rounded up to a power of two and lowered until each
    /// area holds a 128-slot segment, as Linux does [default: 1].
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub nareas: Option<u32>,
    /// The allocation policy: `fast` or `nextfit` (Linux's, slot for
    /// slot) [default: fast].
    #[arg(long, value_enum)]
    pub policy: Option<PolicyName>,
}

impl PoolArgs {
    /// These options, each one not given taken from `defaults`.
    fn or(self, defaults: PoolArgs) -> PoolArgs {
        PoolArgs {
            nslabs: self.nslabs.or(defaults.nslabs),
            nareas: self.nareas.or(defaults.nareas),
            policy: self.policy.or(defaults.policy),
        }
    }
}

/// What a script's `# args:` line may hold, read with the command's own
/// option parser.
#[derive(clap::Parser)]
#[command(no_binary_name = true, disable_help_flag = true)]
struct ArgsLine {
    #[command(flatten)]
    pool: PoolArgs,
}

/// The allocation policies the command offers.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum PolicyName {
    /// The default: a free bitmap searched from the last freed run.
    Fast,
    /// Linux's next-fit over free-run counters, slot for slot.
    Nextfit,
}

/// Runs `swiotlb simulate`.
pub(crate) fn run(args: &Args) -> Result<(), Error> {
    let Some(ops) = &args.ops else {
        return run_profile(args);
    };
    let (source, text) = read_script(ops)?;
    let named = |e: ScriptError| Error::Script {
        script: source.clone(),
        line: e.line,
        problem: e.problem,
    };
    let script = parse(&text).map_err(named)?;
    // Options on the command line win over the script's `# args:` line.
    let pool = args.pool.or(script.args);
    let ops = &script.ops;
    let plot = args.plot.is_some();
    let mut report = match pool.policy.unwrap_or(PolicyName::Fast) {
        PolicyName::Fast => execute::<Fast>(pool, ops, plot),
        PolicyName::Nextfit => execute::<NextFit>(pool, ops, plot),
    }
    .map_err(named)?;
    // Everything is written at once, after the run: a script that fails
    // half way prints nothing on standard output and draws nothing. The
    // picture comes first, so that a run whose picture cannot be written
    // fails as a whole.
    if let (Some(path), Some(timeline)) = (&args.plot, &mut report.timeline) {
        timeline.title = format!(
            "simulate --ops {}: {}, {} slots x {} {}",
            Path::new(&source)
                .file_name()
                .map_or(source.as_str().into(), |n| n.to_string_lossy()),
            report.policy,
            report.stats.io_tlb_nslabs,
            report.nareas,
            if report.nareas == 1 { "area" } else { "areas" }
        );
        plot::write_svg(path, timeline)?;
    }
    print_report(&render(args.json, || report.report(), || report.to_text())?)
}

/// The report as pretty JSON (with `--json`) or as text.
fn render<R: Serialize>(
    json: bool,
    report: impl FnOnce() -> R,
    to_text: impl FnOnce() -> String,
) -> Result<String, Error> {
    if !json {
        return Ok(to_text());
    }
    let mut s = serde_json::to_string_pretty(&report())?;
    s.push('\n');
    Ok(s)
}

pub(crate) fn print_report(out: &str) -> Result<(), Error> {
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        // A reader that stops early (`| head`) is not an error of ours.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::WriteReport(e)),
        _ => Ok(()),
    }
}

/// `swiotlb simulate --profile NAME`: the workload, then its report.
fn run_profile(args: &Args) -> Result<(), Error> {
    let report = profile::run(&args.workload, args.plot.is_some())?;
    if let (Some(path), Some(timeline)) = (&args.plot, report.timeline()) {
        plot::write_svg(path, timeline)?;
    }
    print_report(&render(args.json, || report.report(), || report.to_text())?)?;
    match report.data_errors() {
        0 => Ok(()),
        mappings => Err(Error::DataErrors { mappings }),
    }
}

/// The script's name for messages, and its text.
fn read_script(path: &str) -> Result<(String, String), Error> {
    if path == "-" {
        let mut text = String::new();
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            eprintln!("swiotlb: reading the script from standard input; end it with Ctrl-D");
        }
        stdin
            .lock()
            .read_to_string(&mut text)
            .map_err(|source| Error::ReadStdin {
                what: "the script",
                source,
            })?;
        Ok(("<stdin>".into(), text))
    } else {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.into(),
            source,
        })?;
        Ok((path.into(), text))
    }
}

/// A problem with the script, at a line (0 when it is about no line).
#[derive(Debug)]
pub struct ScriptError {
    /// The line, from 1; 0 when the problem is about no line.
    pub line: usize,
    pub problem: ScriptProblem,
}

fn at(line: usize, problem: ScriptProblem) -> ScriptError {
    ScriptError { line, problem }
}

/// What is wrong with a script, or what went wrong running it.
#[derive(Debug)]
pub enum ScriptProblem {
    /// A line the grammar does not allow, and why (with the form it
    /// should take, where that helps).
    Syntax(String),
    /// A SIZE, OFFSET or LEN that is not a byte count.
    Size {
        field: &'static str,
        error: SizeError,
    },
    /// An option the `# args:` line may not give, or a bad value: clap's
    /// words.
    ArgsLine(String),
    /// A map of an id that is still mapped, from this line.
    AlreadyMapped { id: String, line: usize },
    /// An unmap or sync of an id that was never mapped, or no longer is.
    NotMapped { op: &'static str, id: String },
    /// The simulator refused an operation, or found its bytes wrong.
    Sim {
        op: &'static str,
        id: String,
        error: SimError,
    },
    /// The pool the options ask for cannot be built.
    Pool(swiotlb::Error),
    /// A mapping still live after the last line holds the wrong bytes.
    Verify(SimError),
}

impl std::fmt::Display for ScriptProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScriptProblem::Syntax(why) => f.write_str(why),
            ScriptProblem::Size { field, error } => write!(f, "{field} {error}"),
            ScriptProblem::ArgsLine(why) => write!(
                f,
                "`{ARGS_LINE}` may set only --nslabs N, --nareas N and --policy fast|nextfit: {why}"
            ),
            ScriptProblem::AlreadyMapped { id, line } => {
                write!(
                    f,
                    "map: `{id}` is already mapped (line {line}); unmap it first"
                )
            }
            ScriptProblem::NotMapped { op, id } => write!(f, "{op}: `{id}` is not mapped"),
            ScriptProblem::Sim { op, id, error } => write!(f, "{op} `{id}`: {error}"),
            ScriptProblem::Pool(e) => write!(f, "cannot build the pool: {e}"),
            ScriptProblem::Verify(e) => write!(f, "after the last line: {e}"),
        }
    }
}

impl std::error::Error for ScriptProblem {}

/// One operation of the script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Map {
        id: String,
        size: usize,
        dir: Direction,
        params: MapParams,
    },
    Unmap {
        id: String,
    },
    Sync {
        id: String,
        offset: usize,
        len: usize,
        for_cpu: bool,
    },
}

/// An operation and the line it came from (counted from 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// The line number, from 1.
    pub no: usize,
    pub op: Op,
}

/// The largest SIZE a script may give. The simulator backs every mapping
/// with a real buffer, and no swiotlb mapping comes near this (the largest
/// is one segment, 256 KiB in Linux's geometry).
pub const MAX_SIZE: u64 = 1 << 30;

/// A parsed script.
#[derive(Debug)]
pub struct Script {
    /// The options of its `# args:` line, if it has one.
    pub args: PoolArgs,
    pub ops: Vec<Line>,
}

/// The comment that gives a script its default options.
const ARGS_LINE: &str = "# args:";

/// Reads the options of an `# args:` line (the text after `# args:`).
fn parse_args_line(text: &str) -> Result<PoolArgs, ScriptProblem> {
    use clap::Parser as _;
    match ArgsLine::try_parse_from(text.split_whitespace()) {
        Ok(line) => Ok(line.pool),
        Err(e) => {
            // clap's message without its "error: " and usage lines.
            let msg = e.render().to_string();
            let first = msg.lines().next().unwrap_or_default();
            Err(ScriptProblem::ArgsLine(
                first.strip_prefix("error: ").unwrap_or(first).into(),
            ))
        }
    }
}

/// Parses the whole script, so that a bad line stops the run before any
/// operation.
pub fn parse(text: &str) -> Result<Script, ScriptError> {
    let mut ops = Vec::new();
    let mut args: Option<(usize, PoolArgs)> = None;
    for (i, raw) in text.lines().enumerate() {
        let no = i + 1;
        if let Some(rest) = raw.trim_start().strip_prefix(ARGS_LINE) {
            if let Some((prev, _)) = args {
                return Err(at(
                    no,
                    ScriptProblem::Syntax(format!(
                        "a second `{ARGS_LINE}` line (the first is line {prev})"
                    )),
                ));
            }
            if !ops.is_empty() {
                return Err(at(
                    no,
                    ScriptProblem::Syntax(format!(
                        "`{ARGS_LINE}` must come before the first operation"
                    )),
                ));
            }
            args = Some((no, parse_args_line(rest).map_err(|msg| at(no, msg))?));
            continue;
        }
        let code = raw.split_once('#').map_or(raw, |(code, _)| code);
        let words: Vec<&str> = code.split_whitespace().collect();
        let Some((&verb, rest)) = words.split_first() else {
            continue;
        };
        let op = match verb {
            "map" => parse_map(rest),
            "unmap" => parse_unmap(rest),
            "sync" => parse_sync(rest),
            _ => Err(ScriptProblem::Syntax(format!(
                "unknown operation `{verb}` (expected map, unmap or sync)"
            ))),
        }
        .map_err(|problem| at(no, problem))?;
        ops.push(Line { no, op });
    }
    Ok(Script {
        args: args.map(|(_, a)| a).unwrap_or_default(),
        ops,
    })
}

/// A line the grammar does not allow, and why.
fn syntax(why: impl Into<String>) -> ScriptProblem {
    ScriptProblem::Syntax(why.into())
}

const MAP_USAGE: &str =
    "map ID SIZE [orig=HEX] [min_align=HEX] [alloc_align=HEX] [cpu=N] [dir=to|from|bidi]";

fn parse_map(words: &[&str]) -> Result<Op, ScriptProblem> {
    let [id, size, options @ ..] = words else {
        return Err(syntax(format!("map needs an ID and a SIZE: {MAP_USAGE}")));
    };
    let id = parse_id(id)?;
    let size = parse_size(size).map_err(|error| ScriptProblem::Size {
        field: "SIZE",
        error,
    })?;
    if size > MAX_SIZE {
        return Err(syntax(format!(
            "SIZE {size} is larger than 1 GiB, far beyond any swiotlb mapping"
        )));
    }
    let mut params = MapParams::default();
    let mut dir = Direction::Bidirectional;
    let mut seen: Vec<&str> = Vec::new();
    for opt in options {
        let Some((key, value)) = opt.split_once('=') else {
            return Err(syntax(format!(
                "unexpected `{opt}` after SIZE; options take the form key=value: {MAP_USAGE}"
            )));
        };
        if seen.contains(&key) {
            return Err(syntax(format!("`{key}=` is given twice")));
        }
        let hex_value = || {
            hex(value)
                .ok_or_else(|| syntax(format!("`{key}={value}`: `{value}` is not a hex number")))
        };
        match key {
            "orig" => params.orig = PhysAddr(hex_value()?),
            "min_align" => {
                let m = hex_value()?;
                // No device can have another kind of mask (Linux drivers
                // pass `2^n - 1`), so this is a typo, not a case to simulate.
                if m & m.wrapping_add(1) != 0 {
                    return Err(syntax(format!(
                        "`min_align={value}` is not 2^n - 1 (like 0xfff)"
                    )));
                }
                params.min_align_mask = m;
            }
            "alloc_align" => params.alloc_align_mask = hex_value()?,
            "cpu" => {
                params.cpu = parse_number(value)
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| syntax(format!("`cpu={value}`: `{value}` is not a number")))?;
            }
            "dir" => {
                dir = match value {
                    "to" => Direction::ToDevice,
                    "from" => Direction::FromDevice,
                    "bidi" => Direction::Bidirectional,
                    _ => {
                        return Err(syntax(format!(
                            "`dir={value}`: the direction is to, from or bidi"
                        )))
                    }
                }
            }
            _ => {
                return Err(syntax(format!(
                "unknown option `{key}=` (expected orig=, min_align=, alloc_align=, cpu= or dir=)"
            )))
            }
        }
        seen.push(key);
    }
    Ok(Op::Map {
        id,
        size: size as usize,
        dir,
        params,
    })
}

fn parse_unmap(words: &[&str]) -> Result<Op, ScriptProblem> {
    let [id] = words else {
        return Err(syntax("unmap takes one ID: unmap ID"));
    };
    Ok(Op::Unmap { id: parse_id(id)? })
}

fn parse_sync(words: &[&str]) -> Result<Op, ScriptProblem> {
    let [id, offset, len, whom] = words else {
        return Err(syntax(
            "sync takes an ID, an OFFSET, a LEN and cpu or device: \
             sync ID OFFSET LEN cpu|device",
        ));
    };
    let id = parse_id(id)?;
    let count = |what: &'static str, s: &str| {
        let n = parse_size(s).map_err(|error| ScriptProblem::Size { field: what, error })?;
        usize::try_from(n).map_err(|_| syntax(format!("{what} `{s}` is too large")))
    };
    let offset = count("OFFSET", offset)?;
    let len = count("LEN", len)?;
    let for_cpu = match *whom {
        "cpu" => true,
        "device" => false,
        _ => {
            return Err(syntax(format!(
                "sync is for `cpu` or for `device`, not `{whom}`"
            )))
        }
    };
    Ok(Op::Sync {
        id,
        offset,
        len,
        for_cpu,
    })
}

fn parse_id(s: &str) -> Result<String, ScriptProblem> {
    let ok = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-.:/".contains(c));
    if ok {
        Ok(s.into())
    } else {
        Err(syntax(format!(
            "ID `{s}` may hold only letters, digits and `_ - . : /`"
        )))
    }
}

/// Hex, `0x` optional, `_` allowed between digits.
fn hex(s: &str) -> Option<u64> {
    parse_radix(
        s.strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .unwrap_or(s),
        16,
    )
}

/// Where a map landed.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Placed {
    /// First slot of the mapping, padding excluded.
    pub slot: u32,
    /// First slot of the allocation, padding included.
    pub start: u32,
    /// Slots held, padding included.
    pub nslots: u32,
    /// Bounce address as a byte offset into the pool.
    pub addr: u64,
}

/// The outcome of one map.
#[derive(Clone, Debug)]
pub struct MapEntry {
    /// The map's line.
    pub line: usize,
    pub id: String,
    pub size: usize,
    pub dir: Direction,
    /// Where it landed, or why the engine refused it.
    pub outcome: Result<Placed, swiotlb::Error>,
}

/// What a run produced.
pub struct Report {
    /// The pool's policy, by its name.
    pub policy: &'static str,
    /// The pool's areas (after rounding).
    pub nareas: u32,
    /// Bytes per slot.
    pub slot_size: usize,
    /// Every map of the script, in order, with its outcome.
    pub maps: Vec<MapEntry>,
    /// The pool's statistics after the last line.
    pub stats: Stats,
    /// With `--plot`: `io_tlb_used` after each line that changed it, the
    /// lines of failed maps, the occupancy at the peak (titled by the
    /// caller).
    pub(crate) timeline: Option<Timeline>,
}

/// What the script has done with an id so far.
enum IdState {
    /// Mapped at this line and not unmapped since.
    Live(usize),
    /// Its last map, at this line, failed in the engine.
    Failed,
}

fn sim_problem(op: &'static str, id: &str, error: SimError) -> ScriptProblem {
    ScriptProblem::Sim {
        op,
        id: id.into(),
        error,
    }
}

fn not_mapped(op: &'static str, id: &str) -> ScriptProblem {
    ScriptProblem::NotMapped { op, id: id.into() }
}

/// Runs the operations through a simulator over a `P` pool; with `plot`,
/// records the run for a picture.
pub fn execute<P: Policy>(pool: PoolArgs, ops: &[Line], plot: bool) -> Result<Report, ScriptError> {
    let nslabs = pool
        .nslabs
        .unwrap_or(swiotlb::config::DEFAULT_NSLABS as u32);
    let nareas = pool.nareas.unwrap_or(1);
    let mut sim = Simulator::<P, String>::new(nslabs, PoolConfig::with_areas(nareas))
        .map_err(|e| at(0, ScriptProblem::Pool(e)))?;
    let mut ids: HashMap<&str, IdState> = HashMap::new();
    let mut maps = Vec::new();
    let mut rec = plot.then(|| {
        let p = sim.pool();
        let mut t = Timeline::new(String::new(), "script line", p.nslabs().into());
        t.points.push((0.0, 0));
        Recorder::new(t, p.nslabs(), p.nareas())
    });
    for Line { no, op } in ops {
        let no = *no;
        match op {
            Op::Map {
                id,
                size,
                dir,
                params,
            } => {
                if let Some(IdState::Live(prev)) = ids.get(id.as_str()) {
                    return Err(at(
                        no,
                        ScriptProblem::AlreadyMapped {
                            id: id.clone(),
                            line: *prev,
                        },
                    ));
                }
                let outcome = match sim.map_with(id.clone(), *size, *dir, *params) {
                    Ok(b) => {
                        ids.insert(id, IdState::Live(no));
                        if let Some(rec) = &mut rec {
                            rec.held(no as f64, &b);
                        }
                        Ok(Placed {
                            slot: b.slot,
                            start: b.start,
                            nslots: b.nslots,
                            addr: sim.offset_of(&b),
                        })
                    }
                    Err(SimError::Engine(e)) => {
                        ids.insert(id, IdState::Failed);
                        if let Some(rec) = &mut rec {
                            rec.timeline.failures.push(no as f64);
                        }
                        Err(e)
                    }
                    Err(error) => return Err(at(no, sim_problem("map", id, error))),
                };
                maps.push(MapEntry {
                    line: no,
                    id: id.clone(),
                    size: *size,
                    dir: *dir,
                    outcome,
                });
            }
            Op::Unmap { id } => match ids.remove(id.as_str()) {
                Some(IdState::Live(_)) => {
                    if let (Some(rec), Some(b)) = (&mut rec, sim.bounce(id.as_str())) {
                        rec.freed(no as f64, &b);
                    }
                    sim.unmap(id.as_str())
                        .map_err(|error| at(no, sim_problem("unmap", id, error)))?;
                }
                // Its map failed: a driver does not unmap it either.
                Some(IdState::Failed) => {}
                None => return Err(at(no, not_mapped("unmap", id))),
            },
            Op::Sync {
                id,
                offset,
                len,
                for_cpu,
            } => match ids.get(id.as_str()) {
                Some(IdState::Live(_)) => {
                    let r = if *for_cpu {
                        sim.sync_for_cpu(id.as_str(), *offset, *len)
                    } else {
                        sim.sync_for_device(id.as_str(), *offset, *len)
                    };
                    r.map_err(|error| at(no, sim_problem("sync", id, error)))?;
                }
                Some(IdState::Failed) => {}
                None => return Err(at(no, not_mapped("sync", id))),
            },
        }
    }
    // Mappings still live at the end keep their slots (they show in the
    // statistics); their bytes must still be right.
    sim.verify().map_err(|e| at(0, ScriptProblem::Verify(e)))?;
    Ok(Report {
        policy: sim.pool().policy_name(),
        nareas: sim.pool().nareas(),
        slot_size: sim.pool().slot_size(),
        maps,
        stats: sim.stats(),
        timeline: rec.map(|rec| {
            debug_assert!(
                rec.agrees_with(sim.pool()),
                "the picture's slots are the pool's"
            );
            rec.finish()
        }),
    })
}

/// `swiotlb simulate --ops FILE --json`: every map's outcome, then the
/// pool's statistics.
#[derive(Serialize)]
pub struct ScriptReport<'a> {
    ops: Vec<MapReport<'a>>,
    stats: &'a Stats,
}

/// One map of the script: where it landed, or why it did not.
#[derive(Serialize)]
struct MapReport<'a> {
    line: usize,
    id: &'a str,
    size: usize,
    /// `to`, `from` or `bidi`.
    dir: &'static str,
    #[serde(flatten)]
    outcome: OutcomeReport<'a>,
}

/// `slot`, `start`, `nslots` and `addr` beside the map's other fields, or
/// `error`.
#[derive(Serialize)]
#[serde(untagged)]
enum OutcomeReport<'a> {
    Placed(&'a Placed),
    Failed { error: EngineError },
}

/// An error of the engine: its kind (`pool_full`, `too_large`, ...) and
/// its message.
#[derive(Serialize)]
struct EngineError {
    kind: &'static str,
    message: String,
}

impl Report {
    /// The report `--json` prints.
    pub fn report(&self) -> ScriptReport<'_> {
        let ops = self
            .maps
            .iter()
            .map(|m| MapReport {
                line: m.line,
                id: &m.id,
                size: m.size,
                dir: m.dir.short_name(),
                outcome: match &m.outcome {
                    Ok(p) => OutcomeReport::Placed(p),
                    Err(e) => OutcomeReport::Failed {
                        error: EngineError {
                            kind: e.kind(),
                            message: e.to_string(),
                        },
                    },
                },
            })
            .collect();
        ScriptReport {
            ops,
            stats: &self.stats,
        }
    }

    /// The report printed without `--json`.
    pub fn to_text(&self) -> String {
        let mut t = String::new();
        let nslabs = self.stats.io_tlb_nslabs;
        let pool_bytes = nslabs * self.slot_size as u64;
        let areas = if self.nareas == 1 { "area" } else { "areas" };
        // Writing to a String cannot fail.
        let _ = writeln!(
            t,
            "pool: {nslabs} slots of {} bytes ({}), {} {areas}, policy {}",
            self.slot_size,
            human(pool_bytes),
            self.nareas,
            self.policy,
        );
        let _ = writeln!(t);
        let idw = self
            .maps
            .iter()
            .map(|m| m.id.len())
            .max()
            .unwrap_or(0)
            .max(2);
        let sizew = self
            .maps
            .iter()
            .map(|m| m.size.to_string().len())
            .max()
            .unwrap_or(0)
            .max(4);
        // Hex digits of the last byte's offset, so addresses line up.
        let addrw = 2
            + (64 - pool_bytes.saturating_sub(1).leading_zeros())
                .div_ceil(4)
                .max(1) as usize;
        let _ = writeln!(
            t,
            "{:>5}  {}  {:>sizew$}  {:<4}  {:>6}  {:<addrw$}  {:>6}",
            "line",
            pad_end("id", idw),
            "size",
            "dir",
            "slot",
            "addr",
            "nslots"
        );
        for m in &self.maps {
            let _ = write!(
                t,
                "{:>5}  {}  {:>sizew$}  {:<4}  ",
                m.line,
                pad_end(&m.id, idw),
                m.size,
                m.dir.short_name()
            );
            let _ = match &m.outcome {
                Ok(p) => writeln!(
                    t,
                    "{:>6}  {:<addrw$}  {:>6}",
                    p.slot,
                    format!("{:#0w$x}", p.addr, w = addrw),
                    p.nslots
                ),
                Err(e) => writeln!(t, "failed: {} ({})", e, e.kind()),
            };
        }
        if self.maps.is_empty() {
            let _ = writeln!(t, "(no maps)");
        }
        let _ = writeln!(t);
        let _ = writeln!(t, "{}", self.stats);
        t
    }
}

/// `s` followed by spaces up to `width` characters. By hand rather than
/// with a format width, which the standard library limits to 65,535 and
/// panics beyond; an id has no such limit. Ids are ASCII.
fn pad_end(s: &str, width: usize) -> String {
    let mut out = String::with_capacity(width.max(s.len()));
    out.push_str(s);
    out.extend(std::iter::repeat_n(' ', width.saturating_sub(s.len())));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(text: &str) -> Op {
        parse(text).unwrap().ops.remove(0).op
    }

    fn err(text: &str) -> ScriptError {
        parse(text).unwrap_err()
    }

    #[test]
    fn script_sizes_use_the_size_grammar() {
        let size = |text: &str| match op(text) {
            Op::Map { size, .. } => size,
            other => panic!("{other:?}"),
        };
        assert_eq!(size("map a 4K"), 4096);
        assert_eq!(size("map a 4KiB"), 4096);
        assert_eq!(size("map a 0x2k"), 2048);
        assert_eq!(size("map a 1MiB"), 1 << 20);
        assert_eq!(size("map a 1G"), 1 << 30);
        assert_eq!(size("map a 1GiB"), 1 << 30);
        assert_eq!(
            op("sync a 1KiB 0x10 cpu"),
            Op::Sync {
                id: "a".into(),
                offset: 1024,
                len: 16,
                for_cpu: true,
            }
        );
        assert_eq!(hex("fff"), Some(0xfff));
        assert_eq!(hex("0x1234_5a10"), Some(0x1234_5a10));
        assert_eq!(hex("xyz"), None);
    }

    #[test]
    fn map_lines() {
        assert_eq!(
            op("map a 2K"),
            Op::Map {
                id: "a".into(),
                size: 2048,
                dir: Direction::Bidirectional,
                params: MapParams::default(),
            }
        );
        assert_eq!(
            op("  map rx.0 3000 dir=from orig=0x12345a10 min_align=fff alloc_align=0xffff cpu=3 # nvme"),
            Op::Map {
                id: "rx.0".into(),
                size: 3000,
                dir: Direction::FromDevice,
                params: MapParams {
                    orig: PhysAddr(0x1234_5a10),
                    min_align_mask: 0xfff,
                    alloc_align_mask: 0xffff,
                    cpu: 3,
                },
            }
        );
    }

    #[test]
    fn other_lines() {
        assert_eq!(op("unmap a"), Op::Unmap { id: "a".into() });
        assert_eq!(
            op("sync a 0x10 1K device"),
            Op::Sync {
                id: "a".into(),
                offset: 16,
                len: 1024,
                for_cpu: false,
            }
        );
        let ops = parse("# header\n\n   \nmap a 1 # c\n\t# x\nunmap a\n")
            .unwrap()
            .ops;
        assert_eq!(ops.iter().map(|l| l.no).collect::<Vec<_>>(), [4, 6]);
    }

    #[test]
    fn an_args_line_sets_the_pool_options() {
        let s = parse("# args: --nslabs 128 --policy nextfit\n# more\nmap a 1\n").unwrap();
        assert_eq!(s.args.nslabs, Some(128));
        assert_eq!(s.args.nareas, None);
        assert!(matches!(s.args.policy, Some(PolicyName::Nextfit)));
        assert_eq!(s.ops.len(), 1);
        let none = parse("# plain comment\nmap a 1\n").unwrap();
        assert_eq!(none.args.nslabs, None);
        for (text, line, want) in [
            ("# args: --json\n", 1, "may set only"),
            ("# args: --nslabs 0\n", 1, "may set only"),
            ("# args: --nslabs\n", 1, "may set only"),
            ("# args: --nareas 2\n# args: --nslabs 128\n", 2, "second"),
            (
                "map a 1\n# args: --nslabs 128\n",
                2,
                "before the first operation",
            ),
        ] {
            let e = err(text);
            assert_eq!(e.line, line, "{text}");
            let msg = e.problem.to_string();
            assert!(msg.contains(want), "{text}: {msg}");
        }
    }

    #[test]
    fn bad_lines_name_line_and_problem() {
        let e = err("map a 1\nmpa b 2\n");
        assert_eq!(e.line, 2);
        let msg = e.problem.to_string();
        assert!(msg.contains("unknown operation `mpa`"), "{msg}");
        for (text, want) in [
            ("map a", "needs an ID and a SIZE"),
            ("map a lots", "SIZE `lots` is not a size"),
            ("map a 2G", "larger than 1 GiB"),
            ("map a 2048M", "larger than 1 GiB"),
            ("map a 1MB", "write 1MiB"),
            ("map a 1 dir=sideways", "to, from or bidi"),
            ("map a 1 min_align=0x1000", "not 2^n - 1"),
            ("map a 1 orig=zz", "not a hex number"),
            ("map a 1 cpu=x", "not a number"),
            ("map a 1 colour=red", "unknown option `colour=`"),
            ("map a 1 dir=to dir=from", "given twice"),
            ("map a 1 bidi", "key=value"),
            ("map a=b 1", "ID `a=b`"),
            ("unmap", "one ID"),
            ("unmap a b", "one ID"),
            ("sync a 0 1", "sync takes"),
            ("sync a 0 1 host", "not `host`"),
            ("sync a x 1 cpu", "OFFSET `x`"),
        ] {
            let e = err(text);
            assert_eq!(e.line, 1, "{text}");
            let msg = e.problem.to_string();
            assert!(msg.contains(want), "{text}: {msg}");
        }
    }
}
