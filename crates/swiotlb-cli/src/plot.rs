//! Pictures of a pool over time: the `--plot FILE.svg` of the commands that
//! run a workload through a pool.
//!
//! A command fills in a [`Timeline`] as it runs (a [`Recorder`] does the
//! bookkeeping for one pool) and [`write_svg`] draws it. The top panel is
//! `io_tlb_used` over the run, with the pool's size, the high-water mark,
//! the run's markers and its failed maps; the bottom panel is the pool's
//! occupancy map at the peak, a cell per slot, or per group of slots
//! shaded by the share held when the pool has more slots than fit.
//!
//! Only plotters' SVG backend is built. SVG text is set by whatever shows
//! the picture, so no font library is linked (no fontconfig, freetype or
//! font-kit): without a font feature plotters places labels with its own
//! estimate of a text's width, and the layout here leaves room for its
//! error.

use std::collections::BTreeSet;
use std::fmt::Display;
use std::io;
use std::path::Path;

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use swiotlb::{Bounce, Policy, Pool};

use crate::error::Error;

/// What a run did to its pool, filled in as it went and drawn by
/// [`write_svg`].
///
/// Positions along the run (`x`) are in the one unit `x_label` names;
/// `points` and `pool_slots` come in nondecreasing `x`, as a run makes
/// them.
#[derive(Clone, Debug)]
pub(crate) struct Timeline {
    /// What ran, on which pool: "simulate --ops full.ops: nextfit, 256
    /// slots x 2 areas".
    pub(crate) title: String,
    /// What `x` counts, the axis' title: "script line", "seconds". A
    /// position is written `1.250 s` when it starts with "seconds", and
    /// as "script line 57" otherwise.
    pub(crate) x_label: &'static str,
    /// The pool's size in slots from each `x` on: one entry for a fixed
    /// pool; a growing tlb adds one whenever its pools change. A step
    /// line.
    pub(crate) pool_slots: Vec<(f64, u64)>,
    /// `io_tlb_used` after each change. Any number: the drawing keeps the
    /// first, lowest, highest and last point of each pixel column, so no
    /// peak is lost and the file stays small.
    pub(crate) points: Vec<(f64, u64)>,
    /// Labelled vertical lines: phases of the run, a trace's markers.
    pub(crate) markers: Vec<(f64, String)>,
    /// Where maps failed: red ticks at the foot of the top panel, one per
    /// pixel column that holds any.
    pub(crate) failures: Vec<f64>,
    /// The pool's occupancy at the peak of `io_tlb_used`, if the command
    /// took it (a single pool's; a growing tlb's pools come and go).
    pub(crate) peak: Option<Occupancy>,
}

impl Timeline {
    /// An empty timeline of a fixed pool of `nslabs` slots.
    pub(crate) fn new(title: impl Into<String>, x_label: &'static str, nslabs: u64) -> Timeline {
        Timeline {
            title: title.into(),
            x_label,
            pool_slots: vec![(0.0, nslabs)],
            points: Vec::new(),
            markers: Vec::new(),
            failures: Vec::new(),
            peak: None,
        }
    }
}

/// Which slots a pool held at one moment.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Occupancy {
    /// When, in the timeline's unit.
    pub(crate) x: f64,
    /// `io_tlb_used` then.
    pub(crate) used: u64,
    /// The pool's areas: area `i` starts at slot `i * (slots.len() /
    /// nareas)` and the last one also holds the remainder, as in a
    /// [`Pool`].
    pub(crate) nareas: u32,
    /// One per slot of the pool: `true` when held (padding included, as
    /// `io_tlb_used` counts it).
    pub(crate) slots: Vec<bool>,
}

impl Occupancy {
    /// `pool`'s slots as they are now, at `x`. Takes an area's lock once
    /// per slot: a moment's work for a million slots, too much to do on
    /// every map (a [`Recorder`] follows the placements instead).
    pub(crate) fn of_pool<P: Policy>(pool: &Pool<P>, x: f64) -> Occupancy {
        Occupancy {
            x,
            used: pool.used_slots() as u64,
            nareas: pool.nareas(),
            slots: (0..pool.nslabs()).map(|s| !pool.slot_is_free(s)).collect(),
        }
    }
}

/// Fills a [`Timeline`] for one pool from its placements, and keeps the
/// occupancy map at the peak.
///
/// It follows the pool slot for slot from each allocation's first slot
/// and slot count ([`Bounce::start`], [`Bounce::nslots`], padding
/// included, as `io_tlb_used` counts them), so a map costs its own slots
/// and no look at the pool. A new high is only noted; the map is copied
/// just before slots are next freed, or at the end. Between the two only
/// maps can happen, each a new high of its own, so the copy is the pool at
/// the high; a run that climbs and falls copies once per climb, one bit a
/// slot.
#[derive(Debug)]
pub(crate) struct Recorder {
    /// The timeline being filled: push markers and failures straight in.
    pub(crate) timeline: Timeline,
    nslabs: usize,
    nareas: u32,
    /// The slots held now, a bit each.
    held: Vec<u64>,
    used: u64,
    high: u64,
    /// A new high whose map is not copied yet: its `x`.
    pending: Option<f64>,
    /// The map at the last high copied: `x`, slots held, the bits.
    peak: Option<(f64, u64, Vec<u64>)>,
}

impl Recorder {
    /// A recorder of a pool of `nslabs` slots in `nareas` areas, all free.
    pub(crate) fn new(timeline: Timeline, nslabs: u32, nareas: u32) -> Recorder {
        let nslabs = nslabs as usize;
        Recorder {
            timeline,
            nslabs,
            nareas,
            held: vec![0; nslabs.div_ceil(64)],
            used: 0,
            high: 0,
            pending: None,
            peak: None,
        }
    }

    /// The allocation `b` was made at `x`.
    pub(crate) fn held(&mut self, x: f64, b: &Bounce) {
        self.set(b, true);
        self.used += u64::from(b.nslots);
        self.timeline.points.push((x, self.used));
        if self.used > self.high {
            self.high = self.used;
            self.pending = Some(x);
        }
    }

    /// The allocation `b` is freed at `x`.
    pub(crate) fn freed(&mut self, x: f64, b: &Bounce) {
        if let Some(at) = self.pending.take() {
            self.peak = Some((at, self.high, self.held.clone()));
        }
        self.set(b, false);
        self.used -= u64::from(b.nslots);
        self.timeline.points.push((x, self.used));
    }

    fn set(&mut self, b: &Bounce, held: bool) {
        let slots = b.start as usize..(b.start + b.nslots) as usize;
        assert!(slots.end <= self.nslabs, "{b:?} is outside the pool");
        for s in slots {
            let (word, bit) = (s / 64, 1u64 << (s % 64));
            debug_assert_eq!(self.held[word] & bit != 0, !held, "slot {s} of {b:?}");
            if held {
                self.held[word] |= bit;
            } else {
                self.held[word] &= !bit;
            }
        }
    }

    fn bits_to_slots(&self, bits: &[u64]) -> Vec<bool> {
        (0..self.nslabs)
            .map(|s| bits[s / 64] & (1 << (s % 64)) != 0)
            .collect()
    }

    /// Whether the slots held now are exactly those `pool` holds: a check
    /// that the placements it was given are the pool's.
    pub(crate) fn agrees_with<P: Policy>(&self, pool: &Pool<P>) -> bool {
        Occupancy::of_pool(pool, 0.0).slots == self.bits_to_slots(&self.held)
    }

    /// The timeline, with the map at the last high (or, if no slot was
    /// ever held, the empty pool at the last point).
    pub(crate) fn finish(mut self) -> Timeline {
        let (x, used, bits) = match (self.pending.take(), self.peak.take()) {
            (Some(x), _) => (x, self.high, std::mem::take(&mut self.held)),
            (None, Some(peak)) => peak,
            (None, None) => {
                let x = self.timeline.points.last().map_or(0.0, |p| p.0);
                (x, 0, std::mem::take(&mut self.held))
            }
        };
        self.timeline.peak = Some(Occupancy {
            x,
            used,
            nareas: self.nareas,
            slots: self.bits_to_slots(&bits),
        });
        self.timeline
    }
}

/// Draws `t` into an SVG file at `path`.
pub(crate) fn write_svg(path: &Path, t: &Timeline) -> Result<(), Error> {
    render(t)
        .and_then(|svg| std::fs::write(path, svg))
        .map_err(|source| Error::Plot {
            path: path.into(),
            source,
        })
}

/// The picture's width in pixels, and the top panel's height.
const WIDTH: u32 = 1200;
const TOP_HEIGHT: u32 = 520;
/// Left of the plots: the y axis' labels, and the occupancy map's row
/// labels.
const LEFT: i32 = 96;

/// The occupancy map: at most this many cells, each a square of
/// `MIN_CELL..=MAX_CELL` pixels, in at most `GRID_W` by `GRID_H` pixels.
/// 32 Ki cells show Linux's default pool (64 MiB, 32 Ki slots) a slot
/// per cell in 4-pixel squares, and keep the file to a few megabytes even
/// when every cell differs from the next.
const MAX_CELLS: usize = 1 << 15;
const MIN_CELL: u32 = 2;
const MAX_CELL: u32 = 24;
const GRID_W: u32 = 1024;
const GRID_H: u32 = 512;
/// Shades of a partly held cell.
const SHADES: usize = 16;

// Colours: the series' (tab10), the map's, and text.
const USED: RGBColor = RGBColor(0x1F, 0x77, 0xB4);
const POOL: RGBColor = RGBColor(0x44, 0x44, 0x44);
const HIWATER: RGBColor = RGBColor(0xFF, 0x7F, 0x0E);
const MARKER: RGBColor = RGBColor(0x6A, 0x3D, 0x9A);
/// Failed maps, and nothing else.
const FAILED: RGBColor = RGBColor(0xD6, 0x27, 0x28);
const FREE: RGBColor = RGBColor(0xE6, 0xE6, 0xE6);
const AREA: RGBColor = RGBColor(0x11, 0x11, 0x11);
const TEXT: RGBColor = RGBColor(0x22, 0x22, 0x22);
const NOTE: RGBColor = RGBColor(0x55, 0x55, 0x55);

/// A drawing error as an I/O error, so that one error says the picture
/// failed: drawing into a string fails only on a fault of ours (a
/// drawing area used while another holds the backend).
fn io(e: impl Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// The SVG text of `t`.
fn render(t: &Timeline) -> io::Result<String> {
    let grid = t.peak.as_ref().map(|p| Grid::new(p.slots.len()));
    let height = TOP_HEIGHT + grid.as_ref().map_or(0, Grid::panel_height);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(io)?;
        let (top, bottom) = root.split_vertically(TOP_HEIGHT);
        draw_timeline(&top, t)?;
        if let (Some(peak), Some(grid)) = (&t.peak, &grid) {
            draw_occupancy(&bottom, t, peak, grid)?;
        }
        root.present().map_err(io)?;
    }
    Ok(svg)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Text of `size` pixels (plotters' size: the SVG's is `size / 1.24`),
/// anchored at `pos`.
fn text(size: f64, color: RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    FontDesc::new(FontFamily::SansSerif, size, FontStyle::Normal)
        .color(&color)
        .pos(Pos::new(h, v))
}

fn bold(size: f64, color: RGBColor) -> TextStyle<'static> {
    FontDesc::new(FontFamily::SansSerif, size, FontStyle::Bold)
        .color(&color)
        .pos(Pos::new(HPos::Left, VPos::Top))
}

/// `n` with its thousands separated: 524,288.
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `part` as a percentage of `whole`, one decimal.
fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{:.1}%", part as f64 * 100.0 / whole as f64)
}

/// Position `x` in words: "1.250 s", "script line 57".
fn at(x_label: &str, x: f64) -> String {
    if x_label.starts_with("seconds") {
        format!("{x:.3} s")
    } else if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x_label} {}", x as i64)
    } else {
        format!("{x_label} {x:.3}")
    }
}

/// The pool's size at `x` (the first entry's before it).
fn pool_at(pool_slots: &[(f64, u64)], x: f64) -> u64 {
    let first = pool_slots.first().map_or(0, |p| p.1);
    pool_slots
        .iter()
        .take_while(|p| p.0 <= x)
        .last()
        .map_or(first, |p| p.1)
}

/// At most four of `points` per pixel column (of `columns` over `x0..x1`),
/// in order: the first, the lowest, the highest and the last of the
/// column. The line through them rises to every peak and falls to every
/// trough of the full series and meets the neighbouring columns where the
/// full one does.
fn decimate(points: &[(f64, u64)], x0: f64, x1: f64, columns: u32) -> Vec<(f64, u64)> {
    let columns = columns.max(1);
    if points.len() <= 4 * columns as usize {
        return points.to_vec();
    }
    let scale = f64::from(columns) / (x1 - x0);
    let column = |x: f64| (((x - x0) * scale).floor() as i64).clamp(0, i64::from(columns) - 1);
    let mut out = Vec::with_capacity(4 * columns as usize);
    let mut i = 0;
    while i < points.len() {
        let c = column(points[i].0);
        let first = i;
        let (mut low, mut high) = (i, i);
        while i < points.len() && column(points[i].0) == c {
            if points[i].1 < points[low].1 {
                low = i;
            }
            if points[i].1 > points[high].1 {
                high = i;
            }
            i += 1;
        }
        let mut keep = [first, low, high, i - 1];
        keep.sort_unstable();
        let mut last = None;
        for k in keep {
            if last != Some(k) {
                out.push(points[k]);
                last = Some(k);
            }
        }
    }
    out
}

/// A step line through `points` (each value holds until the next point),
/// carried on to `end`.
fn steps(points: &[(f64, u64)], end: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(2 * points.len() + 1);
    for (i, &(x, y)) in points.iter().enumerate() {
        out.push((x, y as f64));
        let next = points.get(i + 1).map_or(end, |p| p.0);
        out.push((next.max(x), y as f64));
    }
    out
}

/// The top panel: title, legend, and `io_tlb_used` over the run.
fn draw_timeline(area: &Area<'_>, t: &Timeline) -> io::Result<()> {
    // The title, smaller if plotters' estimate says it would not fit.
    let title = bold(26.0, TEXT);
    let (w, _) = area.estimate_text_size(&t.title, &title).map_err(io)?;
    let room = f64::from(WIDTH - 32) / f64::from(w.max(1));
    let title = title.font.resize(26.0 * room.clamp(0.6, 1.0));
    area.draw(&Text::new(
        t.title.clone(),
        (16, 14),
        title.color(&TEXT).pos(Pos::new(HPos::Left, VPos::Top)),
    ))
    .map_err(io)?;

    let xs = t
        .points
        .iter()
        .map(|p| p.0)
        .chain(t.pool_slots.iter().map(|p| p.0))
        .chain(t.markers.iter().map(|m| m.0))
        .chain(t.failures.iter().copied())
        .chain(t.peak.iter().map(|p| p.x))
        .filter(|x| x.is_finite());
    let (mut x0, mut x1) = xs.fold((0.0_f64, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    // Room after the last change, so that it shows.
    x1 += (x1 - x0) * 0.02;
    if x0 < 0.0 {
        x0 -= (x1 - x0) * 0.02;
    }
    let integral = t.points.iter().all(|p| p.0.fract() == 0.0)
        && t.markers.iter().all(|m| m.0.fract() == 0.0)
        && t.failures.iter().all(|f| f.fract() == 0.0);

    // The high-water mark: the first point at the highest value.
    let high = t
        .points
        .iter()
        .fold(None, |best: Option<(f64, u64)>, &p| match best {
            Some(b) if b.1 >= p.1 => Some(b),
            _ => Some(p),
        });
    let hy = high.map_or(0, |h| h.1);
    let pool_max = t.pool_slots.iter().map(|p| p.1).max().unwrap_or(0);
    // A pool used to less than a quarter would flatten the line at the
    // foot of the plot: the scale then stops above the high-water mark,
    // and the pool's size is told in words.
    let zoomed = hy.max(1) * 4 < pool_max;
    let y_top = if zoomed {
        (hy.max(4) as f64) * 1.25
    } else {
        (pool_max.max(hy).max(1) as f64) * 1.12
    };

    legend(area, t, high, zoomed)?;

    let (_, body) = area.split_vertically(78);
    let mut chart = ChartBuilder::on(&body)
        .margin_left(12)
        .margin_right(36)
        .margin_bottom(6)
        .x_label_area_size(52)
        .y_label_area_size(LEFT as u32 - 12)
        .build_cartesian_2d(x0..x1, 0.0..y_top)
        .map_err(io)?;
    let span = x1 - x0;
    let decimals = match span {
        s if s >= 10.0 => 0,
        s if s >= 1.0 => 1,
        s if s >= 0.1 => 2,
        _ => 3,
    };
    let x_format = |x: &f64| {
        if !integral {
            format!("{x:.decimals$}")
        } else if x.fract() == 0.0 && *x >= 0.0 {
            group(*x as u64)
        } else {
            String::new()
        }
    };
    let y_format = |y: &f64| {
        if y.fract() == 0.0 && *y >= 0.0 {
            group(*y as u64)
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .x_desc(t.x_label)
        .y_desc("slots held (io_tlb_used)")
        .axis_desc_style(text(17.0, TEXT, HPos::Center, VPos::Center))
        .label_style(text(15.0, TEXT, HPos::Center, VPos::Center))
        .light_line_style(RGBColor(0xF2, 0xF2, 0xF2))
        .bold_line_style(RGBColor(0xDD, 0xDD, 0xDD))
        .axis_style(RGBColor(0x88, 0x88, 0x88))
        // Whole positions (script lines) get no ticks between them.
        .x_labels(if integral {
            (span.ceil() as usize + 1).min(12)
        } else {
            12
        })
        .y_labels(8)
        .x_label_formatter(&x_format)
        .y_label_formatter(&y_format)
        .draw()
        .map_err(io)?;

    let plot = chart.plotting_area();
    let (plot_w, _) = plot.dim_in_pixel();
    let px = |x: f64, y: f64| plot.map_coordinate(&(x, y));
    let (left, bottom) = px(x0, 0.0);
    let (right, top) = px(x1, y_top);

    // io_tlb_used: a light area under a step line.
    let used = steps(&decimate(&t.points, x0, x1, plot_w), x1);
    if let (Some(first), Some(last)) = (used.first(), used.last()) {
        let mut outline = used.clone();
        outline.push((last.0, 0.0));
        outline.push((first.0, 0.0));
        plot.draw(&Polygon::new(outline, USED.mix(0.16).filled()))
            .map_err(io)?;
        plot.draw(&PathElement::new(used, USED.stroke_width(2)))
            .map_err(io)?;
    }

    // The pool's size: a line labelled at its right end, or, above the
    // scale, words at the top right.
    if let Some(&(_, last)) = t.pool_slots.last() {
        let size = if t.pool_slots.len() == 1 {
            format!("pool: {} slots", group(last))
        } else {
            format!("all pools at the end: {} slots", group(last))
        };
        if zoomed {
            label(
                area,
                format!("{size}, above this scale"),
                (right - 6, top + 6),
                text(16.0, POOL, HPos::Right, VPos::Top),
            )?;
        } else {
            plot.draw(&PathElement::new(
                steps(&t.pool_slots, x1),
                POOL.stroke_width(2),
            ))
            .map_err(io)?;
            let (_, y) = px(x1, last as f64);
            label(
                area,
                size,
                (right - 6, y - 5),
                text(16.0, POOL, HPos::Right, VPos::Bottom),
            )?;
        }
    }

    // The high-water mark: a dashed line, a dot where it was first
    // reached, and its label beside the dot.
    if let Some((hx, hy)) = high {
        let y = hy as f64;
        plot.draw(&DashedPathElement::new(
            [(x0, y), (x1, y)],
            6,
            4,
            HIWATER.stroke_width(1),
        ))
        .map_err(io)?;
        let (cx, cy) = px(hx, y);
        area.draw(&Circle::new((cx, cy), 4, HIWATER.filled()))
            .map_err(io)?;
        let pool_then = pool_at(&t.pool_slots, hx);
        let words = format!(
            "high-water {} slots ({}), {}",
            group(hy),
            percent(hy, pool_then),
            at(t.x_label, hx)
        );
        // Above the line where the pool's line leaves room, else below;
        // on the side of the dot with more room.
        let (_, pool_y) = px(hx, pool_then as f64);
        let room_above = zoomed || pool_then < hy || cy - pool_y > 30;
        let (dy, v) = if room_above {
            (-8, VPos::Bottom)
        } else {
            (8, VPos::Top)
        };
        let (dx, h) = if cx < left + (right - left) * 3 / 5 {
            (8, HPos::Left)
        } else {
            (-8, HPos::Right)
        };
        label(
            area,
            words,
            (cx + dx, cy + dy),
            text(16.0, RGBColor(0xB3, 0x52, 0x00), h, v),
        )?;
    }

    // Markers: dashed lines, their text down the left of the line from
    // the top. Labels of lines closer than a text's height are stacked
    // down the plot rather than written over each other.
    let mut markers: Vec<&(f64, String)> = t.markers.iter().filter(|m| m.0.is_finite()).collect();
    markers.sort_by(|a, b| a.0.total_cmp(&b.0));
    let style = text(15.0, MARKER, HPos::Right, VPos::Bottom).transform(FontTransform::Rotate270);
    let mut last: Option<(i32, i32)> = None;
    for (x, words) in markers {
        plot.draw(&DashedPathElement::new(
            [(*x, 0.0), (*x, y_top)],
            4,
            4,
            MARKER.stroke_width(1),
        ))
        .map_err(io)?;
        let (mx, _) = px(*x, y_top);
        let (len, _) = area.estimate_text_size(words, &style).map_err(io)?;
        let len = len as i32;
        let y = match last {
            Some((lx, free)) if mx - lx < 18 && free + len < bottom => free,
            _ => top + 6,
        };
        area.draw(&Text::new(words.clone(), (mx - 4, y), style.clone()))
            .map_err(io)?;
        last = Some((mx, y + len + 12));
    }

    // Failed maps: a red tick up from the x axis per pixel column.
    let columns: BTreeSet<i32> = t
        .failures
        .iter()
        .filter(|x| x.is_finite())
        .map(|&x| px(x, 0.0).0)
        .collect();
    for cx in columns {
        area.draw(&PathElement::new(
            [(cx, bottom), (cx, bottom - 16)],
            FAILED.stroke_width(2),
        ))
        .map_err(io)?;
    }
    Ok(())
}

/// `words` at `pos` on a pale box, so that lines under them do not cross
/// them.
fn label(area: &Area<'_>, words: String, pos: (i32, i32), style: TextStyle<'_>) -> io::Result<()> {
    let (w, h) = area.estimate_text_size(&words, &style).map_err(io)?;
    let (w, h) = (w as i32, h as i32 + 4);
    let x = match style.pos.h_pos {
        HPos::Left => pos.0,
        HPos::Center => pos.0 - w / 2,
        HPos::Right => pos.0 - w,
    };
    let y = match style.pos.v_pos {
        VPos::Top => pos.1,
        VPos::Center => pos.1 - h / 2,
        VPos::Bottom => pos.1 - h,
    };
    area.draw(&Rectangle::new(
        [(x - 3, y - 1), (x + w + 3, y + h + 1)],
        WHITE.mix(0.8).filled(),
    ))
    .map_err(io)?;
    area.draw(&Text::new(words, pos, style)).map_err(io)
}

/// The legend under the title: a sample of each series and its meaning.
fn legend(area: &Area<'_>, t: &Timeline, high: Option<(f64, u64)>, zoomed: bool) -> io::Result<()> {
    let style = text(16.0, TEXT, HPos::Left, VPos::Center);
    let y = 56;
    let mut x = 18;
    let mut item = |sample: &dyn Fn(i32) -> io::Result<()>, label: String| -> io::Result<()> {
        sample(x)?;
        area.draw(&Text::new(label.clone(), (x + 30, y), style.clone()))
            .map_err(io)?;
        let (w, _) = area.estimate_text_size(&label, &style).map_err(io)?;
        // The estimate is rough (there is no font to measure): the gap
        // after each item absorbs its error.
        x += 30 + w as i32 + 32;
        Ok(())
    };
    let line = |color: RGBColor| {
        move |x: i32| {
            area.draw(&PathElement::new(
                [(x, y), (x + 22, y)],
                color.stroke_width(2),
            ))
            .map_err(io)
        }
    };
    item(&line(USED), "slots held".into())?;
    if !zoomed {
        item(&line(POOL), "pool size".into())?;
    }
    if high.is_some() {
        let dashed = |x: i32| {
            area.draw(&DashedPathElement::new(
                [(x, y), (x + 22, y)],
                6,
                4,
                HIWATER.stroke_width(2),
            ))
            .map_err(io)
        };
        item(&dashed, "high-water mark".into())?;
    }
    if !t.markers.is_empty() {
        let dashed = |x: i32| {
            area.draw(&DashedPathElement::new(
                [(x + 11, y - 9), (x + 11, y + 9)],
                4,
                3,
                MARKER.stroke_width(1),
            ))
            .map_err(io)
        };
        item(&dashed, "marker".into())?;
    }
    let n = t.failures.len() as u64;
    if n > 0 {
        let tick = |x: i32| {
            area.draw(&PathElement::new(
                [(x + 11, y + 8), (x + 11, y - 6)],
                FAILED.stroke_width(2),
            ))
            .map_err(io)
        };
        let maps = if n == 1 { "map" } else { "maps" };
        item(&tick, format!("{} failed {maps}", group(n)))?;
    }
    Ok(())
}

/// How the occupancy map lays out a pool's slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Grid {
    /// Slots in the pool.
    slots: usize,
    /// Slots per cell: a power of two, 1 unless the pool has more slots
    /// than `MAX_CELLS`.
    per_cell: usize,
    /// Cells per row: a power of two, so that rows start at round slot
    /// numbers.
    cols: usize,
    rows: usize,
    /// A cell's side in pixels.
    cell: u32,
}

impl Grid {
    /// The layout with the fewest slots per cell, then the largest cells,
    /// that fits `GRID_W` by `GRID_H`.
    fn new(slots: usize) -> Grid {
        let mut per_cell = 1;
        loop {
            let cells = slots.div_ceil(per_cell).max(1);
            if cells <= MAX_CELLS {
                for cell in (MIN_CELL..=MAX_CELL).rev() {
                    let fit = (GRID_W / cell) as usize;
                    // The widest power of two that fits and is not wider
                    // than the pool.
                    let cols = (1usize << fit.ilog2()).min(cells.next_power_of_two());
                    let rows = cells.div_ceil(cols);
                    if rows * cell as usize <= GRID_H as usize {
                        return Grid {
                            slots,
                            per_cell,
                            cols,
                            rows,
                            cell,
                        };
                    }
                }
            }
            per_cell *= 2;
        }
    }

    fn width(&self) -> i32 {
        (self.cols as u32 * self.cell) as i32
    }

    fn height(&self) -> i32 {
        (self.rows as u32 * self.cell) as i32
    }

    /// The bottom panel's height: caption, map, legend.
    fn panel_height(&self) -> u32 {
        GRID_TOP as u32 + self.height() as u32 + 76
    }

    fn cells(&self) -> usize {
        self.slots.div_ceil(self.per_cell)
    }
}

/// Where the map starts in the bottom panel.
const GRID_TOP: i32 = 74;

/// How much of a cell's slots are held: 0 (none) to `SHADES` (all), a
/// held slot always showing.
fn shade(slots: &[bool]) -> usize {
    let held = slots.iter().filter(|&&h| h).count();
    match held {
        0 => 0,
        h if h == slots.len() => SHADES,
        h => 1 + h * (SHADES - 1) / slots.len(),
    }
}

/// The colour of a shade: free grey to held blue, a partly held cell at
/// least a fifth of the way.
fn shade_color(shade: usize) -> RGBColor {
    let t = match shade {
        0 => 0.0,
        s if s >= SHADES => 1.0,
        s => 0.2 + 0.65 * (s - 1) as f64 / (SHADES - 2) as f64,
    };
    let mix = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * t).round() as u8;
    RGBColor(
        mix(FREE.0, USED.0),
        mix(FREE.1, USED.1),
        mix(FREE.2, USED.2),
    )
}

/// The bottom panel: the occupancy map at the peak, its caption and
/// legend.
fn draw_occupancy(area: &Area<'_>, t: &Timeline, peak: &Occupancy, g: &Grid) -> io::Result<()> {
    let n = peak.slots.len();
    let caption = format!(
        "Occupancy at the peak: {} of {} slots held ({}), {}",
        group(peak.used),
        group(n as u64),
        percent(peak.used, n as u64),
        at(t.x_label, peak.x)
    );
    area.draw(&Text::new(caption, (LEFT, 10), bold(20.0, TEXT)))
        .map_err(io)?;
    let cells = if g.per_cell == 1 {
        "one cell per slot".to_string()
    } else {
        format!(
            "one cell per {} slots, shaded by the share held",
            g.per_cell
        )
    };
    let areas = match peak.nareas {
        0 | 1 => "1 area".to_string(),
        a => format!("{a} areas, boundaries drawn in black"),
    };
    let detail = format!(
        "rows of {} slots, {cells}; {areas}",
        group((g.cols * g.per_cell) as u64)
    );
    area.draw(&Text::new(
        detail,
        (LEFT, 40),
        text(16.0, NOTE, HPos::Left, VPos::Top),
    ))
    .map_err(io)?;

    let (gx, gy, s) = (LEFT, GRID_TOP, g.cell as i32);
    area.draw(&Rectangle::new(
        [(gx - 1, gy - 1), (gx + g.width() + 1, gy + g.height() + 1)],
        RGBColor(0xBB, 0xBB, 0xBB).stroke_width(1),
    ))
    .map_err(io)?;
    // Large cells each get a square with a gap; small ones are merged
    // into one rectangle per run of a colour in a row, to keep the file
    // small.
    let gap = i32::from(s >= 8);
    let shades: Vec<usize> = (0..g.cells())
        .map(|c| shade(&peak.slots[c * g.per_cell..((c + 1) * g.per_cell).min(n)]))
        .collect();
    for (r, row) in shades.chunks(g.cols).enumerate() {
        let y = gy + r as i32 * s;
        let mut c = 0;
        while c < row.len() {
            let mut end = c + 1;
            if gap == 0 {
                while end < row.len() && row[end] == row[c] {
                    end += 1;
                }
            }
            let x = gx + c as i32 * s;
            area.draw(&Rectangle::new(
                [(x, y), (gx + end as i32 * s - gap, y + s - gap)],
                shade_color(row[c]).filled(),
            ))
            .map_err(io)?;
            c = end;
        }
    }

    // Area boundaries: a step along the cells where each area begins.
    let nareas = peak.nareas.max(1) as usize;
    let per_area = n / nareas;
    if per_area > 0 {
        for a in 1..nareas {
            let cell = a * per_area / g.per_cell;
            let (r, c) = ((cell / g.cols) as i32, (cell % g.cols) as i32);
            let y = gy + r * s;
            let path = if c == 0 {
                vec![(gx, y), (gx + g.width(), y)]
            } else {
                let x = gx + c * s;
                vec![(gx + g.width(), y), (x, y), (x, y + s), (gx, y + s)]
            };
            area.draw(&PathElement::new(path, AREA.stroke_width(2)))
                .map_err(io)?;
        }
    }

    // Row labels: the first slot of every few rows.
    let every = (20 / s.max(1) as usize + 1).next_power_of_two();
    for r in (0..g.rows).step_by(every) {
        area.draw(&Text::new(
            group((r * g.cols * g.per_cell) as u64),
            (gx - 8, gy + r as i32 * s + s / 2),
            text(14.0, NOTE, HPos::Right, VPos::Center),
        ))
        .map_err(io)?;
    }

    // Legend: the colours, and the boundary line.
    let y = gy + g.height() + 30;
    let style = text(16.0, TEXT, HPos::Left, VPos::Center);
    let mut x = LEFT;
    let mut swatch = |colors: &[RGBColor], label: &str| -> io::Result<()> {
        for color in colors {
            area.draw(&Rectangle::new(
                [(x, y - 8), (x + 16, y + 8)],
                color.filled(),
            ))
            .map_err(io)?;
            x += 18;
        }
        area.draw(&Text::new(label.to_string(), (x + 6, y), style.clone()))
            .map_err(io)?;
        let (w, _) = area.estimate_text_size(label, &style).map_err(io)?;
        x += 6 + w as i32 + 32;
        Ok(())
    };
    swatch(&[shade_color(0)], "free")?;
    swatch(&[shade_color(SHADES)], "held")?;
    if g.per_cell > 1 {
        let partly = [1, SHADES / 2, SHADES - 1].map(shade_color);
        swatch(&partly, "partly held")?;
    }
    if nareas > 1 {
        area.draw(&PathElement::new(
            [(x, y), (x + 22, y)],
            AREA.stroke_width(2),
        ))
        .map_err(io)?;
        area.draw(&Text::new("area boundary", (x + 30, y), style.clone()))
            .map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use swiotlb::sim::Simulator;
    use swiotlb::{Direction, Fast, PoolConfig};

    /// The elements named `tag` of a parsed picture.
    fn elements<'a, 'i>(
        doc: &'a roxmltree::Document<'i>,
        tag: &'a str,
    ) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> + 'a {
        doc.descendants().filter(move |n| n.has_tag_name(tag))
    }

    fn texts(doc: &roxmltree::Document<'_>) -> Vec<String> {
        elements(doc, "text")
            .map(|n| n.text().unwrap_or_default().trim().to_string())
            .collect()
    }

    /// Polylines drawn in `color`.
    fn lines_of<'a, 'i>(
        doc: &'a roxmltree::Document<'i>,
        color: RGBColor,
    ) -> Vec<roxmltree::Node<'a, 'i>> {
        let want = format!("#{:02X}{:02X}{:02X}", color.0, color.1, color.2);
        elements(doc, "polyline")
            .filter(|n| n.attribute("stroke") == Some(want.as_str()))
            .collect()
    }

    fn coords(polyline: &roxmltree::Node<'_, '_>) -> Vec<(f64, f64)> {
        polyline
            .attribute("points")
            .unwrap()
            .split_whitespace()
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect()
    }

    fn sample() -> Timeline {
        let mut t = Timeline::new("a test & <its> pool", "script line", 128);
        t.points = vec![(0.0, 0), (1.0, 32), (2.0, 96), (3.0, 40), (9.0, 0)];
        t.markers = vec![(2.0, "start".into()), (5.0, "stop".into())];
        t.failures = vec![4.0, 6.0, 7.0];
        t.peak = Some(Occupancy {
            x: 2.0,
            used: 96,
            nareas: 2,
            slots: (0..128).map(|s| s < 96).collect(),
        });
        t
    }

    #[test]
    fn the_picture_is_well_formed_and_holds_every_part() {
        let svg = render(&sample()).unwrap();
        let doc = roxmltree::Document::parse(&svg).unwrap();
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        let texts = texts(&doc);
        // The title, escaped on the way in and read back whole.
        assert!(
            texts.iter().any(|t| t == "a test & <its> pool"),
            "{texts:?}"
        );
        for marker in ["start", "stop"] {
            assert_eq!(texts.iter().filter(|t| *t == marker).count(), 1, "{marker}");
        }
        assert!(texts.iter().any(|t| t == "pool: 128 slots"), "{texts:?}");
        assert!(
            texts
                .iter()
                .any(|t| t == "high-water 96 slots (75.0%), script line 2"),
            "{texts:?}"
        );
        assert!(texts.iter().any(|t| t == "3 failed maps"), "{texts:?}");
        assert!(
            texts
                .iter()
                .any(|t| t == "Occupancy at the peak: 96 of 128 slots held (75.0%), script line 2"),
            "{texts:?}"
        );
        // A tick per failed map, and one more in the legend.
        assert_eq!(lines_of(&doc, FAILED).len(), 3 + 1);
        // The pool's line runs flat across the plot, above the highest
        // point of the used line (96 slots of 128).
        let pool = lines_of(&doc, POOL)
            .into_iter()
            .map(|l| coords(&l))
            .find(|c| c.iter().all(|p| p.1 == c[0].1) && c[c.len() - 1].0 - c[0].0 > 500.0)
            .expect("a flat pool line across the plot");
        let used = lines_of(&doc, USED)
            .into_iter()
            .map(|l| coords(&l))
            .max_by_key(|c| c.len())
            .unwrap();
        let top = used.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        assert!(top > pool[0].1, "96 slots are drawn below the pool's 128");
    }

    #[test]
    fn a_timeline_without_a_peak_has_no_map() {
        let mut t = sample();
        t.peak = None;
        let svg = render(&t).unwrap();
        let doc = roxmltree::Document::parse(&svg).unwrap();
        assert_eq!(
            doc.root_element().attribute("height"),
            Some(TOP_HEIGHT.to_string().as_str())
        );
        assert!(!texts(&doc).iter().any(|t| t.starts_with("Occupancy")));
        // An empty timeline draws too.
        let empty = Timeline::new("nothing", "seconds", 0);
        roxmltree::Document::parse(&render(&empty).unwrap()).unwrap();
    }

    #[test]
    fn decimation_keeps_the_peak_of_a_million_points() {
        let n = 1_000_000;
        let spike = 777_777;
        let points: Vec<(f64, u64)> = (0..n)
            .map(|i| {
                (
                    i as f64,
                    if i == spike {
                        90_000
                    } else {
                        (i % 1000) as u64
                    },
                )
            })
            .collect();
        let kept = decimate(&points, 0.0, n as f64, 1000);
        assert!(kept.len() <= 4 * 1000, "{}", kept.len());
        assert_eq!(kept.iter().map(|p| p.1).max(), Some(90_000));
        assert!(kept.contains(&(spike as f64, 90_000)));
        assert_eq!(kept.first(), points.first());
        assert_eq!(kept.last(), points.last());
        // Each column's trough survives too.
        assert_eq!(kept.iter().filter(|p| p.1 == 0).count(), 1000);

        // Drawn, the line reaches the spike: its highest pixel is the
        // high-water mark's dot.
        let mut t = Timeline::new("spike", "operation", 100_000);
        t.points = points;
        let svg = render(&t).unwrap();
        assert!(svg.len() < 1 << 20, "{} bytes", svg.len());
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let used = lines_of(&doc, USED)
            .into_iter()
            .map(|l| coords(&l))
            .max_by_key(|c| c.len())
            .unwrap();
        let top = used.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let dot = elements(&doc, "circle").next().unwrap();
        let cy: f64 = dot.attribute("cy").unwrap().parse().unwrap();
        assert_eq!(top, cy);
        assert!(texts(&doc)
            .iter()
            .any(|t| t == "high-water 90,000 slots (90.0%), operation 777777"));
    }

    #[test]
    fn grids_fit_from_128_slots_to_512_ki() {
        for shift in 7..=19 {
            for slots in [1 << shift, (1 << shift) + 100] {
                let g = Grid::new(slots);
                assert!(g.width() <= GRID_W as i32 && g.height() <= GRID_H as i32);
                assert!(g.cells() <= MAX_CELLS && g.cols * g.rows >= g.cells());
                assert!(g.cell >= MIN_CELL, "{g:?}");
                assert!(g.cols.is_power_of_two() && g.per_cell.is_power_of_two());
            }
        }
        // Linux's default pool, a slot per cell; 512 Ki slots in 16s.
        let g = Grid::new(32768);
        assert_eq!((g.per_cell, g.cols, g.rows, g.cell), (1, 256, 128, 4));
        let g = Grid::new(512 << 10);
        assert_eq!((g.per_cell, g.cols, g.rows, g.cell), (16, 256, 128, 4));
        let g = Grid::new(128);
        assert_eq!((g.per_cell, g.cols, g.rows, g.cell), (1, 32, 4, 24));
    }

    #[test]
    fn a_large_pool_draws_shaded_cells_and_its_areas() {
        let slots = 512 << 10;
        let mut t = Timeline::new("big", "seconds", slots as u64);
        t.points = vec![(0.0, 0), (1.5, 3 * (slots as u64) / 8)];
        // Every other slot of the first quarter, all of the second
        // eighth... one half-held area among free and full ones.
        let held: Vec<bool> = (0..slots)
            .map(|s| (s < slots / 4 && s % 2 == 0) || (slots / 4..slots / 2).contains(&s))
            .collect();
        t.peak = Some(Occupancy {
            x: 1.5,
            used: held.iter().filter(|&&h| h).count() as u64,
            nareas: 4,
            slots: held,
        });
        let svg = render(&t).unwrap();
        assert!(svg.len() < 1 << 20, "{} bytes", svg.len());
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let fills: BTreeSet<&str> = elements(&doc, "rect")
            .filter_map(|r| r.attribute("fill"))
            .collect();
        let hex = |c: RGBColor| format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2);
        for shade in [0, SHADES / 2, SHADES] {
            assert!(fills.contains(hex(shade_color(shade)).as_str()), "{shade}");
        }
        // Three boundaries between four areas, and one in the legend.
        assert_eq!(lines_of(&doc, AREA).len(), 3 + 1);
        let texts = texts(&doc);
        assert!(
            texts
                .iter()
                .any(|t| t == "rows of 4,096 slots, one cell per 16 slots, shaded by the share held; 4 areas, boundaries drawn in black"),
            "{texts:?}"
        );
        assert!(texts.iter().any(|t| t.ends_with("1.500 s")), "{texts:?}");
    }

    #[test]
    fn shades_show_any_held_slot() {
        assert_eq!(shade(&[false; 16]), 0);
        assert_eq!(shade(&[true; 16]), SHADES);
        let mut one = [false; 16];
        one[3] = true;
        assert_eq!(shade(&one), 1);
        assert_ne!(shade_color(1), shade_color(0));
        let mut all_but_one = [true; 16];
        all_but_one[0] = false;
        assert_eq!(shade(&all_but_one), SHADES - 1);
        assert_ne!(shade_color(SHADES - 1), shade_color(SHADES));
    }

    #[test]
    fn numbers_and_positions_read_well() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(524_288), "524,288");
        assert_eq!(at("seconds", 1.25), "1.250 s");
        assert_eq!(at("script line", 57.0), "script line 57");
        assert_eq!(pool_at(&[(0.0, 10), (5.0, 20)], 4.0), 10);
        assert_eq!(pool_at(&[(0.0, 10), (5.0, 20)], 5.0), 20);
    }

    /// The map is the pool at its high, though it is copied later, and
    /// the recorder's count and slots are the pool's own.
    #[test]
    fn the_recorder_keeps_the_pool_as_it_was_at_the_peak() {
        let mut sim = Simulator::<Fast, u32>::new(128, PoolConfig::with_areas(1)).unwrap();
        let mut rec = Recorder::new(Timeline::new("t", "operation", 128), 128, 1);
        let mut held_at_peak = Vec::new();
        for (x, id, size) in [(1.0, 1, 4096), (2.0, 2, 8192), (3.0, 3, 2048)] {
            let b = sim.map(id, size, Direction::ToDevice).unwrap();
            rec.held(x, &b);
            assert_eq!(rec.used, sim.pool().used_slots() as u64);
            if x == 3.0 {
                held_at_peak = (0..128).map(|s| !sim.pool().slot_is_free(s)).collect();
            }
        }
        for (x, id) in [(4.0, 1), (5.0, 3)] {
            let b = sim.bounce(&id).unwrap();
            rec.freed(x, &b);
            sim.unmap(&id).unwrap();
            assert_eq!(rec.used, sim.pool().used_slots() as u64);
            assert!(rec.agrees_with(sim.pool()));
        }
        let b = sim.map(4, 2048, Direction::ToDevice).unwrap();
        rec.held(6.0, &b);
        assert!(rec.agrees_with(sim.pool()));
        let t = rec.finish();
        let peak = t.peak.unwrap();
        assert_eq!((peak.x, peak.used), (3.0, 7));
        assert_eq!(peak.slots, held_at_peak);
        assert_eq!(sim.stats().io_tlb_used_hiwater, 7);
        assert_eq!(
            t.points,
            [(1.0, 2), (2.0, 6), (3.0, 7), (4.0, 5), (5.0, 4), (6.0, 5)]
        );
        // A run that never holds a slot maps the empty pool.
        let t = Recorder::new(Timeline::new("t", "operation", 128), 128, 2).finish();
        assert_eq!(t.peak.unwrap().slots, vec![false; 128]);
    }
}
