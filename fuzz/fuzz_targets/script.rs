//! The operations script reader of `swiotlb simulate --ops`
//! (`swiotlb_cli::script::parse`), and the run of what it reads on the
//! simulator (`execute`), on any text: the bytes as UTF-8 when they are,
//! else with every bad sequence replaced (`from_utf8_lossy`).
//!
//! Checked, for the reader:
//! - it reads the text or names a line inside it (1 to the line count)
//!   with a problem of the grammar (syntax, a size, the `# args:` line);
//!   the lines before that line read without a problem, and the text cut
//!   after it fails there with the same words: a problem is found at the
//!   first line that has one;
//! - an operation comes from each line whose text before any `#` is not
//!   blank, in order, starting with its verb; every other line is blank
//!   or a comment;
//!   pool options come only from a single `# args:` line before the
//!   first operation;
//! - a script written back from what was read, in a canonical form (one
//!   spelling: decimal sizes, hex masks, every option) and in another
//!   (binary units, hex sizes, `_` in numbers, no `0x` on masks), each
//!   operation at its own line, reads as the same operations and pool
//!   options.
//!
//! For a run (both policies, a pool of at most 1024 slots, at most 256
//! operations):
//! - it ends, with a report or an error of the kinds a script may cause:
//!   a map of an id still mapped (naming the line of that map), an unmap
//!   or sync of an id not mapped, a sync past the mapping's end (the
//!   engine's `OutOfBounds`), or a pool the options cannot build (line 0);
//!   never a failed byte check, nor the simulator's own refusals, which
//!   the reader and the script's bookkeeping rule out;
//! - a report has one entry per map, in order; each placement is inside
//!   the pool and inside one segment, holds the mapping, keeps the
//!   original's offset bits under `min_align_mask` and is aligned as
//!   `alloc_align_mask` asks (below the pool's own 4 KiB alignment), and
//!   overlaps no other live mapping;
//! - the statistics agree with the placements: slots in use are those of
//!   the mappings still live (also summed per area), the high-water mark
//!   is the most ever held at once (exact), at most the pool, and the
//!   failures are the refused maps;
//! - the text report has a row per map with its line, id, size,
//!   direction and placement or failure, then the statistics; the JSON
//!   report has the same maps and counters.
#![no_main]

use std::collections::HashMap;
use std::fmt::Write as _;

use libfuzzer_sys::fuzz_target;
use swiotlb::config::IO_TLB_SEGSIZE;
use swiotlb::sim::MapParams;
use swiotlb::{Direction, Error, Fast, NextFit};
use swiotlb_cli::script::{
    execute, parse, Line, Op, PolicyName, PoolArgs, Report, Script, ScriptError, ScriptProblem,
    MAX_SIZE,
};

/// Operations run per script; the rest is read but not run.
const MAX_OPS: usize = 256;
/// The largest pool run, in slots (2 MiB); larger ones are folded below.
const MAX_NSLABS: u32 = 1024;
/// The pool when the script gives none (the command's default is 64 MiB).
const DEFAULT_NSLABS: u32 = 256;
/// The heap pool's start is at least this aligned, so offsets into the
/// pool keep an address's bits below it.
const POOL_ALIGN: u64 = 4096;

fuzz_target!(|data: &[u8]| {
    match std::str::from_utf8(data) {
        Ok(text) => check(text),
        Err(_) => check(&String::from_utf8_lossy(data)),
    }
});

fn check(text: &str) {
    let lines: Vec<&str> = text.lines().collect();
    match parse(text) {
        Ok(script) => {
            check_lines(&script, &lines);
            for style in [Style::Canonical, Style::Other] {
                round_trip(&script, style);
            }
            run(&script, text.len());
        }
        Err(e) => check_parse_error(&e, &lines),
    }
}

/// The first `n` lines of the text, as a text.
fn first_lines(lines: &[&str], n: usize) -> String {
    lines[..n].join("\n")
}

fn check_parse_error(e: &ScriptError, lines: &[&str]) {
    let msg = e.problem.to_string();
    assert!(
        (1..=lines.len()).contains(&e.line),
        "error at line {} of {} lines: {msg}",
        e.line,
        lines.len()
    );
    assert!(
        matches!(
            e.problem,
            ScriptProblem::Syntax(_) | ScriptProblem::Size { .. } | ScriptProblem::ArgsLine(_)
        ),
        "the reader gave a run's problem: {:?}",
        e.problem
    );
    assert!(!msg.is_empty());
    let before = first_lines(lines, e.line - 1);
    if let Err(b) = parse(&before) {
        panic!(
            "error at line {} ({msg}), but the lines before it fail at line {}: {}",
            e.line, b.line, b.problem
        );
    }
    let upto = first_lines(lines, e.line);
    match parse(&upto) {
        Ok(_) => panic!(
            "error at line {} ({msg}), but the text up to it reads",
            e.line
        ),
        Err(u) => {
            assert_eq!(u.line, e.line, "cut after the bad line");
            assert_eq!(u.problem.to_string(), msg, "cut after the bad line");
        }
    }
}

/// The verb of each operation.
fn verb(op: &Op) -> &'static str {
    match op {
        Op::Map { .. } => "map",
        Op::Unmap { .. } => "unmap",
        Op::Sync { .. } => "sync",
    }
}

fn check_lines(script: &Script, lines: &[&str]) {
    let mut ops = script.ops.iter().peekable();
    for (i, raw) in lines.iter().enumerate() {
        let no = i + 1;
        let code = raw.split('#').next().unwrap_or_default();
        match ops.next_if(|l| l.no == no) {
            Some(l) => {
                assert_eq!(
                    code.split_whitespace().next(),
                    Some(verb(&l.op)),
                    "line {no}: {raw:?} gave {:?}",
                    l.op
                );
                if let Op::Map { size, params, .. } = &l.op {
                    assert!(*size as u64 <= MAX_SIZE, "line {no}: size {size}");
                    let m = params.min_align_mask;
                    assert_eq!(m & m.wrapping_add(1), 0, "line {no}: min_align {m:#x}");
                }
            }
            None => assert!(
                code.trim().is_empty(),
                "line {no}: {raw:?} is not blank but gave no operation"
            ),
        }
    }
    assert!(
        ops.next().is_none(),
        "operations past the last line, or out of order"
    );
    // At most one `# args:` line, before the first operation; options
    // only from one.
    let args: Vec<usize> = (1..=lines.len())
        .filter(|&no| lines[no - 1].trim_start().starts_with("# args:"))
        .collect();
    assert!(args.len() <= 1, "`# args:` lines {args:?} read");
    if let (Some(a), Some(first)) = (args.first(), script.ops.first()) {
        assert!(
            *a < first.no,
            "`# args:` at line {a}, after line {}",
            first.no
        );
    }
    let given = script.args.nslabs.is_some()
        || script.args.nareas.is_some()
        || script.args.policy.is_some();
    assert!(!given || !args.is_empty(), "options without `# args:`");
}

/// How a script is written back.
#[derive(Clone, Copy, Debug)]
enum Style {
    /// Decimal sizes, `0x` masks, every option, single spaces.
    Canonical,
    /// Binary units and hex sizes, `_` between digits, masks without
    /// `0x`, default options left out, tabs and trailing comments.
    Other,
}

/// A byte count in the style's spelling.
fn size(n: u64, style: Style) -> String {
    match style {
        Style::Canonical => n.to_string(),
        Style::Other => {
            if n >= 1 << 30 && n.is_multiple_of(1 << 30) {
                format!("{}GiB", n >> 30)
            } else if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
                format!("{}m", n >> 20)
            } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
                format!("{}K", n >> 10)
            } else if n % 2 == 1 {
                format!("0X{n:X}")
            } else {
                underscored(n)
            }
        }
    }
}

/// `n` in decimal with `_` every three digits.
fn underscored(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('_');
        }
        out.push(c);
    }
    out
}

/// A mask or address in the style's spelling.
fn hex(n: u64, style: Style) -> String {
    match style {
        Style::Canonical => format!("{n:#x}"),
        Style::Other => format!("{n:x}"),
    }
}

/// The script written back in `style`, each operation at its own line
/// (blank lines between), the `# args:` line first.
fn write_script(script: &Script, style: Style) -> String {
    let mut out = String::new();
    let mut no = 0;
    let a = &script.args;
    if a.nslabs.is_some() || a.nareas.is_some() || a.policy.is_some() {
        out.push_str("# args:");
        if let Some(n) = a.nslabs {
            let _ = write!(out, " --nslabs {n}");
        }
        if let Some(n) = a.nareas {
            let _ = write!(out, " --nareas={n}");
        }
        match a.policy {
            Some(PolicyName::Fast) => out.push_str(" --policy fast"),
            Some(PolicyName::Nextfit) => out.push_str(" --policy nextfit"),
            None => {}
        }
        out.push('\n');
        no = 1;
    }
    for Line { no: at, op } in &script.ops {
        assert!(*at > no, "an operation at line {at}, after line {no}");
        while no + 1 < *at {
            out.push('\n');
            no += 1;
        }
        write_op(&mut out, op, style);
        out.push('\n');
        no += 1;
    }
    out
}

fn write_op(out: &mut String, op: &Op, style: Style) {
    let sep = match style {
        Style::Canonical => " ",
        Style::Other => " \t",
    };
    match op {
        Op::Map {
            id,
            size: n,
            dir,
            params,
        } => {
            let _ = write!(out, "map{sep}{id}{sep}{}", size(*n as u64, style));
            let dir = match dir {
                Direction::ToDevice => "to",
                Direction::FromDevice => "from",
                Direction::Bidirectional => "bidi",
            };
            let d = MapParams::default();
            let every = matches!(style, Style::Canonical);
            // Options in another order than the usage line's.
            if every || dir != "bidi" {
                let _ = write!(out, "{sep}dir={dir}");
            }
            if every || params.cpu != d.cpu {
                let _ = write!(out, "{sep}cpu={}", params.cpu);
            }
            if every || params.alloc_align_mask != d.alloc_align_mask {
                let _ = write!(
                    out,
                    "{sep}alloc_align={}",
                    hex(params.alloc_align_mask, style)
                );
            }
            if every || params.min_align_mask != d.min_align_mask {
                let _ = write!(out, "{sep}min_align={}", hex(params.min_align_mask, style));
            }
            if every || params.orig != d.orig {
                let _ = write!(out, "{sep}orig={}", hex(params.orig.0, style));
            }
        }
        Op::Unmap { id } => {
            let _ = write!(out, "unmap{sep}{id}");
        }
        Op::Sync {
            id,
            offset,
            len,
            for_cpu,
        } => {
            let _ = write!(
                out,
                "sync{sep}{id}{sep}{}{sep}{}{sep}{}",
                size(*offset as u64, style),
                size(*len as u64, style),
                if *for_cpu { "cpu" } else { "device" }
            );
        }
    }
    if matches!(style, Style::Other) {
        out.push_str(" # written back");
    }
}

fn round_trip(script: &Script, style: Style) {
    let text = write_script(script, style);
    let back = match parse(&text) {
        Ok(s) => s,
        Err(e) => panic!(
            "{style:?} text fails at line {}: {}\n{text}",
            e.line, e.problem
        ),
    };
    assert_eq!(back.ops, script.ops, "{style:?} text:\n{text}");
    assert_eq!(
        format!("{:?}", back.args),
        format!("{:?}", script.args),
        "{style:?} text:\n{text}"
    );
}

/// The pool a run uses: the script's, folded to at most `MAX_NSLABS`
/// slots, and `DEFAULT_NSLABS` when it gives none.
fn pool(args: &PoolArgs) -> PoolArgs {
    let nslabs = match args.nslabs {
        None => DEFAULT_NSLABS,
        Some(n) if n <= MAX_NSLABS => n,
        Some(n) => n % MAX_NSLABS + 1,
    };
    PoolArgs {
        nslabs: Some(nslabs),
        nareas: args.nareas,
        policy: None,
    }
}

fn run(script: &Script, len: usize) {
    let pool = pool(&script.args);
    let ops = &script.ops[..script.ops.len().min(MAX_OPS)];
    // The picture's recorder checks itself against the pool; run it on
    // half of the inputs, alternating which policy has it.
    let plot = len.is_multiple_of(2);
    check_run(execute::<Fast>(pool, ops, plot), pool, ops);
    check_run(execute::<NextFit>(pool, ops, !plot), pool, ops);
}

/// The last map or unmap of `id` before line `no`.
fn last_map_or_unmap<'a>(ops: &'a [Line], id: &str, no: usize) -> Option<&'a Line> {
    ops.iter()
        .rev()
        .filter(|l| l.no < no)
        .find(|l| match &l.op {
            Op::Map { id: i, .. } | Op::Unmap { id: i } => i == id,
            Op::Sync { .. } => false,
        })
}

fn check_run(r: Result<Report, ScriptError>, pool: PoolArgs, ops: &[Line]) {
    match r {
        Ok(report) => check_report(&report, pool, ops),
        Err(e) => check_run_error(&e, ops),
    }
}

fn check_run_error(e: &ScriptError, ops: &[Line]) {
    if let ScriptProblem::Pool(_) = e.problem {
        assert_eq!(e.line, 0, "{:?}", e.problem);
        return;
    }
    let Some(line) = ops.iter().find(|l| l.no == e.line) else {
        panic!(
            "run error at line {}, no operation: {:?}",
            e.line, e.problem
        );
    };
    match (&e.problem, &line.op) {
        (ScriptProblem::AlreadyMapped { id, line: prev }, Op::Map { id: mid, .. }) => {
            assert_eq!(id, mid);
            let last = last_map_or_unmap(ops, id, e.line);
            assert!(
                matches!(last, Some(Line { no, op: Op::Map { .. } }) if no == prev),
                "{id} already mapped at line {prev}, but its last map or unmap is {last:?}"
            );
        }
        (ScriptProblem::NotMapped { op, id }, Op::Unmap { id: oid } | Op::Sync { id: oid, .. }) => {
            assert_eq!(id, oid);
            assert_eq!(*op, verb(&line.op));
            let last = last_map_or_unmap(ops, id, e.line);
            assert!(
                !matches!(
                    last,
                    Some(Line {
                        op: Op::Map { .. },
                        ..
                    })
                ),
                "{id} not mapped, but its last map or unmap is {last:?}"
            );
        }
        (
            ScriptProblem::Sim {
                op: "sync",
                id,
                error: swiotlb::sim::SimError::Engine(Error::OutOfBounds { .. }),
            },
            Op::Sync {
                id: sid,
                offset,
                len,
                ..
            },
        ) => {
            assert_eq!(id, sid);
            let last = last_map_or_unmap(ops, id, e.line);
            let Some(Line {
                op: Op::Map { size, .. },
                ..
            }) = last
            else {
                panic!("a sync of {id} out of bounds, but its last map or unmap is {last:?}");
            };
            assert!(
                offset.checked_add(*len).is_none_or(|end| end > *size),
                "a sync of {offset}+{len} bytes of {size} out of bounds"
            );
        }
        (problem, op) => panic!("line {}: {op:?} failed with {problem:?}", e.line),
    }
}

fn check_report(report: &Report, pool: PoolArgs, ops: &[Line]) {
    let nslabs = u64::from(pool.nslabs.unwrap_or(DEFAULT_NSLABS));
    let stats = &report.stats;
    assert_eq!(stats.io_tlb_nslabs, nslabs);
    assert!(report.nareas.is_power_of_two(), "{} areas", report.nareas);
    let slot = report.slot_size as u64;
    let seg = u64::from(IO_TLB_SEGSIZE);

    let mut maps = report.maps.iter();
    // Slots of each live mapping: (start, nslots, size).
    let mut live: HashMap<&str, Option<(u64, u64, usize)>> = HashMap::new();
    let (mut used, mut hiwater, mut failed) = (0u64, 0u64, 0u64);
    for Line { no, op } in ops {
        match op {
            Op::Map {
                id,
                size,
                dir,
                params,
            } => {
                let m = maps.next().expect("a map without an entry");
                assert_eq!(
                    (m.line, m.id.as_str(), m.size, m.dir),
                    (*no, id.as_str(), *size, *dir)
                );
                assert!(
                    !matches!(live.get(id.as_str()), Some(Some(_))),
                    "line {no}: {id} mapped twice"
                );
                match &m.outcome {
                    Ok(p) => {
                        let (start, nslots) = (u64::from(p.start), u64::from(p.nslots));
                        let s = u64::from(p.slot);
                        assert!(nslots >= 1 && start + nslots <= nslabs, "line {no}: {p:?}");
                        assert!(start <= s && s < start + nslots, "line {no}: {p:?}");
                        assert!(
                            start % seg + nslots <= seg,
                            "line {no}: {p:?} spans segments"
                        );
                        assert_eq!(p.addr / slot, s, "line {no}: {p:?}");
                        assert!(
                            p.addr + *size as u64 <= (start + nslots) * slot,
                            "line {no}: {size} bytes at {p:?}"
                        );
                        let low = params.min_align_mask & (slot - 1);
                        assert_eq!(
                            (p.addr ^ params.orig.0) & low,
                            0,
                            "line {no}: {p:?} for {params:?}"
                        );
                        let a = params.alloc_align_mask;
                        if a & a.wrapping_add(1) == 0 {
                            assert_eq!(
                                (start * slot) & a & (POOL_ALIGN - 1),
                                0,
                                "line {no}: {p:?} for {params:?}"
                            );
                        }
                        for (other, held) in &live {
                            if let Some((os, on, _)) = held {
                                assert!(
                                    start + nslots <= *os || os + on <= start,
                                    "line {no}: {id} at {p:?} overlaps {other} at {os}+{on}"
                                );
                            }
                        }
                        live.insert(id, Some((start, nslots, *size)));
                        used += nslots;
                        hiwater = hiwater.max(used);
                    }
                    Err(_) => {
                        live.insert(id, None);
                        failed += 1;
                    }
                }
            }
            Op::Unmap { id } => match live.remove(id.as_str()) {
                Some(Some((_, nslots, _))) => used -= nslots,
                Some(None) => {}
                None => panic!("line {no}: unmap of {id}, never mapped, ran"),
            },
            Op::Sync {
                id, offset, len, ..
            } => match live.get(id.as_str()) {
                Some(Some((_, _, size))) => assert!(
                    offset.checked_add(*len).is_some_and(|end| end <= *size),
                    "line {no}: a sync of {offset}+{len} bytes of {size} ran"
                ),
                Some(None) => {}
                None => panic!("line {no}: sync of {id}, never mapped, ran"),
            },
        }
    }
    assert!(maps.next().is_none(), "more entries than maps");
    assert_eq!(stats.io_tlb_used, used, "slots in use");
    assert_eq!(
        stats.area_used.iter().sum::<u64>(),
        used,
        "slots in use per area"
    );
    assert_eq!(stats.io_tlb_used_hiwater, hiwater, "high-water mark");
    assert!(stats.io_tlb_used_hiwater <= nslabs);
    assert_eq!(stats.total_failures(), failed, "failures");
    assert!(stats.hiwater_exact, "the simulator keeps the exact mark");
    check_rendering(report);
}

/// The text and JSON reports say what the report holds.
fn check_rendering(report: &Report) {
    let text = report.to_text();
    let rows: Vec<&str> = text.lines().collect();
    let stats = report.stats.to_string();
    // The pool, a blank line, the header, a row per map (or "(no
    // maps)"), a blank line, the statistics.
    let nrows = report.maps.len().max(1);
    assert_eq!(rows.len(), 3 + nrows + 1 + stats.lines().count(), "{text}");
    assert!(text.ends_with(&format!("{stats}\n")), "{text}");
    for (m, row) in report.maps.iter().zip(&rows[3..]) {
        let words: Vec<&str> = row.split_whitespace().collect();
        let (line, size) = (m.line.to_string(), m.size.to_string());
        assert_eq!(
            words[..4],
            [&line, &m.id, &size, m.dir.short_name()],
            "{row}"
        );
        match &m.outcome {
            Ok(p) => {
                let addr = words[5]
                    .strip_prefix("0x")
                    .map(|h| u64::from_str_radix(h, 16));
                assert_eq!(words[4], p.slot.to_string(), "{row}");
                assert_eq!(addr, Some(Ok(p.addr)), "{row}");
                assert_eq!(words[6], p.nslots.to_string(), "{row}");
            }
            Err(e) => {
                assert_eq!(words[4], "failed:", "{row}");
                assert!(row.ends_with(&format!("({})", e.kind())), "{row}");
            }
        }
    }
    let json = serde_json::to_value(report.report()).expect("the JSON report");
    let ops = json["ops"].as_array().expect("ops");
    assert_eq!(ops.len(), report.maps.len());
    for (m, j) in report.maps.iter().zip(ops) {
        assert_eq!(j["line"], m.line, "{j}");
        assert_eq!(j["id"], m.id.as_str(), "{j}");
        assert_eq!(j["size"], m.size, "{j}");
        assert_eq!(j["dir"], m.dir.short_name(), "{j}");
        match &m.outcome {
            Ok(p) => {
                assert_eq!(j["slot"], p.slot, "{j}");
                assert_eq!(j["start"], p.start, "{j}");
                assert_eq!(j["nslots"], p.nslots, "{j}");
                assert_eq!(j["addr"], p.addr, "{j}");
            }
            Err(e) => assert_eq!(j["error"]["kind"], e.kind(), "{j}"),
        }
    }
    let s = &json["stats"];
    assert_eq!(s["io_tlb_used"], report.stats.io_tlb_used, "{s}");
    assert_eq!(
        s["io_tlb_used_hiwater"], report.stats.io_tlb_used_hiwater,
        "{s}"
    );
}
