//! `swiotlb simulate --plot FILE.svg`, run as a user runs it: the picture
//! is read back as XML and its parts are checked against the run's own
//! report.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// The colours the picture gives its parts (`src/plot.rs`).
const FAILED: &str = "#D62728";
const POOL: &str = "#444444";
const HELD: &str = "#1F77B4";

fn simulate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_swiotlb"))
        .arg("simulate")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the swiotlb binary runs")
}

/// A path for a picture of this test's own.
fn svg_path(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.svg"));
    let _ = std::fs::remove_file(&path);
    path
}

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/ops")
        .join(name)
        .to_str()
        .unwrap()
        .to_owned()
}

/// Runs `args`, which succeed quietly, and returns standard output.
fn quiet_run(args: &[&str]) -> String {
    let out = simulate(args);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The picture at `path`: it must parse as XML, with an `svg` root.
struct Picture {
    text: String,
}

impl Picture {
    fn read(path: &Path) -> Picture {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("no picture at {}: {e}", path.display()));
        let doc = roxmltree::Document::parse(&text)
            .unwrap_or_else(|e| panic!("{} is not well-formed XML: {e}", path.display()));
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        Picture { text }
    }

    fn doc(&self) -> roxmltree::Document<'_> {
        roxmltree::Document::parse(&self.text).unwrap()
    }

    /// The text of every `<text>`, trimmed.
    fn texts(&self) -> Vec<String> {
        self.doc()
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .map(|n| n.text().unwrap_or_default().trim().to_owned())
            .collect()
    }

    fn has_text(&self, want: &str) -> bool {
        self.texts().iter().any(|t| t == want)
    }

    /// The points of each polyline drawn in `color`.
    fn lines(&self, color: &str) -> Vec<Vec<(f64, f64)>> {
        self.doc()
            .descendants()
            .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke") == Some(color))
            .map(|n| {
                n.attribute("points")
                    .unwrap()
                    .split_whitespace()
                    .map(|p| {
                        let (x, y) = p.split_once(',').unwrap();
                        (x.parse().unwrap(), y.parse().unwrap())
                    })
                    .collect()
            })
            .collect()
    }

    /// Rectangles filled with `color`.
    fn rects(&self, color: &str) -> usize {
        self.doc()
            .descendants()
            .filter(|n| n.has_tag_name("rect") && n.attribute("fill") == Some(color))
            .count()
    }
}

/// A pool that fills and fragments: two maps fail (lines 17 and 26), the
/// pool is full at line 14.
#[test]
fn a_script_draws_its_pool_its_failures_and_its_peak() {
    let script = example("full.ops");
    let path = svg_path("full");
    let json = quiet_run(&["--ops", &script, "--json"]);
    let plotted = quiet_run(&["--ops", &script, "--json", "--plot", path.to_str().unwrap()]);
    // The report does not change with a picture.
    assert_eq!(plotted, json);
    let report: Value = serde_json::from_str(&json).unwrap();
    let failed: Vec<u64> = report["ops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m.get("error").is_some())
        .map(|m| m["line"].as_u64().unwrap())
        .collect();
    assert_eq!(failed, [17, 26]);
    assert_eq!(report["stats"]["io_tlb_used_hiwater"], 128);

    let pic = Picture::read(&path);
    assert!(
        pic.has_text("simulate --ops full.ops: fast, 128 slots x 1 area"),
        "{:?}",
        pic.texts()
    );
    // A tick per failed map, one more beside its count in the legend.
    assert!(pic.has_text("2 failed maps"), "{:?}", pic.texts());
    assert_eq!(pic.lines(FAILED).len(), failed.len() + 1);
    // The pool's size: a line across the plot, and its label.
    assert!(pic.has_text("pool: 128 slots"), "{:?}", pic.texts());
    assert!(pic
        .lines(POOL)
        .iter()
        .any(|l| l.iter().all(|p| p.1 == l[0].1) && l[l.len() - 1].0 - l[0].0 > 500.0));
    // The high-water mark and the map at the peak, where the report
    // puts them.
    assert!(
        pic.has_text("high-water 128 slots (100.0%), script line 14"),
        "{:?}",
        pic.texts()
    );
    assert!(
        pic.has_text("Occupancy at the peak: 128 of 128 slots held (100.0%), script line 14"),
        "{:?}",
        pic.texts()
    );
    // Every slot held, a cell each, and the legend's swatch.
    assert_eq!(pic.rects(HELD), 128 + 1);
}

/// The map is taken at the first and highest peak, not at the end.
#[test]
fn the_map_is_the_pool_at_its_high_water_mark() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let script = dir.join("peak.ops");
    std::fs::write(
        &script,
        "# args: --nslabs 256 --nareas 2\n\
         map a 64K\n\
         map b 16K cpu=1\n\
         unmap a\n\
         map c 8K\n",
    )
    .unwrap();
    let path = svg_path("peak");
    quiet_run(&[
        "--ops",
        script.to_str().unwrap(),
        "--plot",
        path.to_str().unwrap(),
    ]);
    let pic = Picture::read(&path);
    // 32 + 8 slots at line 3; 12 at the end.
    assert!(
        pic.has_text("Occupancy at the peak: 40 of 256 slots held (15.6%), script line 3"),
        "{:?}",
        pic.texts()
    );
    assert_eq!(pic.rects(HELD), 40 + 1);
    assert!(pic.has_text("rows of 32 slots, one cell per slot; 2 areas, boundaries drawn in black"));
    // No failed map: no ticks, no count.
    assert!(pic.lines(FAILED).is_empty());
}

#[test]
fn a_picture_that_cannot_be_written_names_its_path_and_exit_2() {
    let out = simulate(&[
        "--ops",
        &example("basic.ops"),
        "--plot",
        "/nonexistent/dir/pool.svg",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("swiotlb: cannot write the plot /nonexistent/dir/pool.svg: "),
        "{err}"
    );
    // The run fails as a whole: no report either.
    assert!(out.stdout.is_empty());
}

/// A growing tlb: its size steps up with growth and down in the idle
/// phase, the phases are markers, and there is no single pool to map.
#[test]
fn a_profile_draws_its_growing_tlb_and_its_phases() {
    let path = svg_path("burst");
    quiet_run(&["--profile", "burst", "--plot", path.to_str().unwrap()]);
    let pic = Picture::read(&path);
    let texts = pic.texts();
    assert!(
        pic.has_text(
            "simulate --profile burst: may-sleep callers, 2 threads, tlb of 1 MiB growing by 4 MiB up to 512 MiB"
        ),
        "{texts:?}"
    );
    for marker in ["release", "idle"] {
        assert_eq!(
            texts.iter().filter(|t| *t == marker).count(),
            1,
            "{texts:?}"
        );
    }
    assert!(
        !texts.iter().any(|t| t.starts_with("Occupancy")),
        "{texts:?}"
    );
    // Given back down to the first pool, 1 MiB of 2 KiB slots.
    assert!(pic.has_text("all pools at the end: 512 slots"), "{texts:?}");
    let pool = pic
        .lines(POOL)
        .into_iter()
        .max_by_key(Vec::len)
        .expect("a pool line");
    let levels: std::collections::BTreeSet<i64> = pool.iter().map(|p| p.1 as i64).collect();
    assert!(levels.len() > 10, "the tlb's size changes: {levels:?}");
}

/// A tlb too small for the burst: the failures the report counts are in
/// the picture.
#[test]
fn a_profile_draws_its_failures() {
    let path = svg_path("limit");
    let json = quiet_run(&[
        "--profile",
        "burst",
        "--start",
        "1MiB",
        "--grow-by",
        "1MiB",
        "--max",
        "4MiB",
        "--wait-ms",
        "10",
        "--json",
        "--plot",
        path.to_str().unwrap(),
    ]);
    let report: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["failures"], 2);
    let pic = Picture::read(&path);
    assert!(pic.has_text("2 failed maps"), "{:?}", pic.texts());
    // Both workers may fail in the same pixel column: one tick or two.
    let ticks = pic.lines(FAILED).len() - 1;
    assert!((1..=2).contains(&ticks), "{ticks}");
}
