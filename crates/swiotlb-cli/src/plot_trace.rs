//! Pictures of trace replays: a replay's timeline in the plot module's
//! terms (seconds of trace time).

use std::path::Path;

use swiotlb_trace::replay::{Report, SizeReport, Timeline as TraceTimeline};

use crate::error::Error;
use crate::plot::{self, Occupancy, Timeline};

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn convert(title: String, nareas: u32, tl: &TraceTimeline) -> Timeline {
    let mut t = Timeline::new(title, "seconds", tl.pool_slots.first().map_or(0, |p| p.1));
    t.pool_slots = tl
        .pool_slots
        .iter()
        .map(|&(x, n)| (seconds(x), n))
        .collect();
    // The pool starts empty at the first event.
    t.points = std::iter::once((0.0, 0))
        .chain(tl.points.iter().map(|&(x, n)| (seconds(x), n)))
        .collect();
    t.markers = tl
        .markers
        .iter()
        .map(|(x, m)| (seconds(*x), m.clone()))
        .collect();
    t.failures = tl.failures.iter().map(|&x| seconds(x)).collect();
    t.peak = tl.peak.as_ref().map(|(x, used, slots)| Occupancy {
        x: seconds(*x),
        used: *used,
        nareas,
        slots: slots.clone(),
    });
    t
}

fn name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// `replay --plot`.
pub(crate) fn write(
    path: &Path,
    trace: &Path,
    r: &Report,
    tl: &TraceTimeline,
) -> Result<(), Error> {
    let title = format!(
        "replay of {}: {}, {} slots x {} areas",
        name(trace),
        r.policy.name(),
        r.io_tlb_nslabs,
        r.io_tlb_nareas
    );
    plot::write_svg(path, &convert(title, r.io_tlb_nareas, tl))
}

/// `size --plot`: the recommended pool's replay.
pub(crate) fn write_size(
    path: &Path,
    trace: &Path,
    r: &SizeReport,
    tl: &TraceTimeline,
) -> Result<(), Error> {
    let c = r.nextfit.recommended;
    let title = format!(
        "{} replayed on {}: nextfit, {} slots x {} areas",
        name(trace),
        r.nextfit.swiotlb,
        c.nslabs,
        c.nareas
    );
    plot::write_svg(path, &convert(title, c.nareas, tl))
}
