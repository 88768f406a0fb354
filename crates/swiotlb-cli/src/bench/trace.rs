//! `trace_*`: reading and replaying a kernel trace, per line, against
//! splitting the same text into lines (the floor any line parser stands
//! on), in one run.
//!
//! The input is the shipped sample (`samples/sev-nvme.trace.gz`: an SEV
//! guest's NVMe and network DMA, 89,033 lines in the kernel's format),
//! built into the command and decompressed once before timing, so that
//! the rows time parsing and replaying, not gzip.

use std::hint::black_box;
use std::io::{BufRead, Read};
use std::time::Instant;

use swiotlb_trace::replay::{self, Options, Policy};
use swiotlb_trace::{Parser, Record};

use super::report::Row;
use super::timing::{interleave, Contender, Run, Sampling};
use crate::error::Error;

/// The sample trace, gzip-compressed.
const SAMPLE: &[u8] = include_bytes!("../../../../samples/sev-nvme.trace.gz");

fn sample() -> Result<Vec<u8>, Error> {
    let mut text = Vec::new();
    flate2::read::GzDecoder::new(SAMPLE)
        .read_to_end(&mut text)
        .map_err(|e| {
            Error::Bench(format!(
                "trace: the built-in sample does not decompress: {e}"
            ))
        })?;
    Ok(text)
}

/// Lines split off a buffered reader, nothing else: one operation is
/// the whole text.
fn split(text: &[u8]) -> Run<'_> {
    Box::new(move |n| {
        let t = Instant::now();
        for _ in 0..n {
            let mut r = black_box(text);
            let mut line = Vec::with_capacity(256);
            let mut count = 0u64;
            while r
                .read_until(b'\n', &mut line)
                .map_err(|e| Error::Bench(e.to_string()))?
                > 0
            {
                count += 1;
                line.clear();
            }
            black_box(count);
        }
        Ok(t.elapsed())
    })
}

/// The streaming parser over the whole text.
fn parse(text: &[u8]) -> Run<'_> {
    Box::new(move |n| {
        let t = Instant::now();
        for _ in 0..n {
            let mut sum = 0u64;
            for r in Parser::new(black_box(text)) {
                if let Ok(Record::Event(e)) = r {
                    sum = sum.wrapping_add(e.timestamp_ns);
                }
            }
            black_box(sum);
        }
        Ok(t.elapsed())
    })
}

/// A whole replay (both passes) with `policy`.
fn replay_run(text: &[u8], policy: Policy) -> Run<'_> {
    Box::new(move |n| {
        let t = Instant::now();
        for _ in 0..n {
            let r = replay::replay(black_box(text), &Options::with_policy(policy))
                .map_err(|e| Error::Bench(format!("trace: the sample does not replay: {e}")))?;
            black_box(r.io_tlb_used_hiwater);
        }
        Ok(t.elapsed())
    })
}

/// The `trace_split`, `trace_parse` and `trace_replay` rows, in ns per
/// line of the sample.
pub(crate) fn trace_part(sampling: Sampling, rows: &mut Vec<Row>) -> Result<(), Error> {
    let text = sample()?;
    let lines = text.iter().filter(|&&b| b == b'\n').count() as f64;
    // Checked once before timing: the sample parses cleanly and replays
    // as its README says.
    let r = replay::replay(text.as_slice(), &Options::default())
        .map_err(|e| Error::Bench(format!("trace: the sample does not replay: {e}")))?;
    if r.malformed.count != 0 || r.mappings == 0 {
        return Err(Error::Bench(format!(
            "trace: the sample reads as {} malformed lines and {} bounces",
            r.malformed.count, r.mappings
        )));
    }
    let mut cs = vec![
        Contender::new(split(&text)),
        Contender::new(parse(&text)),
        Contender::new(replay_run(&text, Policy::NextFit)),
        Contender::new(replay_run(&text, Policy::Fast)),
    ];
    let res = interleave(&mut cs, sampling)?;
    drop(cs);
    let named = [
        (
            "trace_split",
            "none",
            "lines split off the text, nothing parsed",
        ),
        ("trace_parse", "none", "the streaming parser"),
        (
            "trace_replay",
            "nextfit",
            "survey, pairing and replay through NextFit",
        ),
        (
            "trace_replay",
            "fast",
            "survey, pairing and replay through the fast policy",
        ),
    ];
    for ((name, policy, what), s) in named.into_iter().zip(res) {
        let per_line = s.median / lines;
        rows.push(
            Row::new(name, policy, text.len() as u64, "none", per_line, "ns/line")
                .spread(s.spread)
                .note(format!(
                    "{what}: {:.2} million lines/s, {} lines, one thread",
                    1e3 / per_line,
                    lines as u64
                )),
        );
    }
    Ok(())
}
