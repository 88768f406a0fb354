//! `swiotlb replay` and `swiotlb size`, run as a user runs them: the real
//! binary on trace files written here in the kernel's format, with the
//! expected numbers counted by hand from the sizes (a bounce of `size`
//! bytes at a slot start holds `ceil(size / 2048)` slots).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn swiotlb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_swiotlb"))
        .args(args)
        .output()
        .expect("the swiotlb binary runs")
}

fn file(name: &str, text: &str) -> PathBuf {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, text).expect("file written");
    path
}

fn line(us: u64, pid: u32, cpu: u32, event: &str) -> String {
    format!(
        "             fio-{pid:<6} [{cpu:03}] ..... {}.{:06}: {event}\n",
        500 + us / 1_000_000,
        us % 1_000_000
    )
}

/// `n` bounces of `size` bytes on one device from two CPUs, all live at
/// the marker "full", then all unmapped; the kernel fails the last
/// `kernel_fails` of them.
fn ramp(n: u64, size: u64, kernel_fails: u64) -> String {
    let mut s = String::from("# tracer: nop\n#\n");
    let mut us = 0;
    let mut next = || {
        us += 3;
        us
    };
    s += &line(next(), 1, 0, "tracing_mark_write: ramp");
    for i in 0..n {
        let cpu = (i % 2) as u32;
        let orig = 0x1_0000_0000 + (i << 20);
        s += &line(next(), 40 + cpu, cpu, &format!(
            "swiotlb_bounced: dev_name: 0000:02:00.0 dma_mask=ffffffff dev_addr={orig:x} size={size} FORCE"
        ));
        let dma = if i + kernel_fails >= n {
            u64::MAX
        } else {
            0xbbe0_0000 + (i << 16)
        };
        s += &line(next(), 40 + cpu, cpu, &format!(
            "dma_map_page: 0000:02:00.0 dir=FROM_DEVICE dma_addr={dma:x} size={size} phys_addr={orig:x} attrs="
        ));
    }
    s += &line(next(), 1, 0, "tracing_mark_write: full");
    for i in 0..n.saturating_sub(kernel_fails) {
        let dma = 0xbbe0_0000 + (i << 16);
        s += &line(
            next(),
            0,
            1,
            &format!(
                "dma_unmap_page: 0000:02:00.0 dir=FROM_DEVICE dma_addr={dma:x} size={size} attrs="
            ),
        );
    }
    s
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[test]
fn replay_reports_the_fields_the_issue_names() {
    // 40 bounces of 5000 bytes: 3 slots each, 120 at the peak.
    let path = file("ramp.trace", &ramp(40, 5000, 0));
    let v = json(&swiotlb(&[
        "replay",
        path.to_str().unwrap(),
        "--nslabs",
        "1024",
        "--nareas",
        "2",
        "--json",
    ]));
    // Two markers, 40 bounces with their maps, 40 unmaps.
    assert_eq!(v["events"], 2 + 80 + 40);
    assert_eq!(v["mappings"], 40);
    assert_eq!(v["io_tlb_nslabs"], 1024);
    assert_eq!(v["io_tlb_nareas"], 2);
    assert_eq!(v["geometry_source"], "options");
    assert_eq!(v["io_tlb_used_hiwater"], 120);
    assert_eq!(v["failures"], 0);
    assert_eq!(v["kernel_failures"], 0);
    let m = v["markers"].as_array().unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(
        (m[0]["text"].as_str(), m[0]["io_tlb_used"].as_u64()),
        (Some("ramp"), Some(0))
    );
    assert_eq!(m[0]["io_tlb_used_hiwater"], 120);
    assert_eq!(m[1]["io_tlb_used"], 120);
    assert_eq!(m[1]["io_tlb_used_hiwater"], 0, "only unmaps after it");
    let d = &v["per_device"][0];
    assert_eq!(d["name"], "0000:02:00.0");
    assert_eq!(
        (d["mappings"].as_u64(), d["bytes"].as_u64()),
        (Some(40), Some(200_000))
    );
    assert_eq!(d["hiwater"], 120);
    assert_eq!(d["min_align_mask"], 0);
}

#[test]
fn a_small_pool_fails_where_the_kernel_did_not() {
    // 5000 bytes take 3 slots, and a mapping of a page or more starts on
    // a page (an even slot): nothing is freed, so next-fit packs them at
    // slots 0, 4, 8, ...: 64 fit in 256 slots, 36 of 100 fail. The kernel
    // failed the last 5: 5 fail in both, 31 in the replay only.
    let path = file("ramp-fail.trace.gz", "");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(ramp(100, 5000, 5).as_bytes()).unwrap();
    std::fs::write(&path, gz.finish().unwrap()).unwrap();
    let v = json(&swiotlb(&[
        "replay",
        path.to_str().unwrap(),
        "--nslabs",
        "256",
        "--nareas",
        "1",
        "--json",
    ]));
    assert_eq!(v["io_tlb_used_hiwater"], 64 * 3);
    assert_eq!(v["kernel_failures"], 5);
    assert_eq!(v["failures"], 36);
    let c = &v["failures_compared"];
    assert_eq!(
        (
            c["both"].as_u64(),
            c["only_kernel"].as_u64(),
            c["only_replay"].as_u64()
        ),
        (Some(5), Some(0), Some(31))
    );
    let text = swiotlb(&[
        "replay",
        path.to_str().unwrap(),
        "--nslabs",
        "256",
        "--nareas",
        "1",
    ]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("failures:  replay 36, kernel 5"), "{text}");
    assert!(text.contains("ramp"), "{text}");
}

#[test]
fn size_names_the_kernel_command_line() {
    // 300 slots at the peak, 2 areas: 512 slots (Linux's next power of
    // two) holds it with 41 % free.
    let path = file("ramp-size.trace", &ramp(100, 5000, 0));
    let v = json(&swiotlb(&[
        "size",
        path.to_str().unwrap(),
        "--nareas",
        "2",
        "--json",
    ]));
    assert_eq!(v["demand_slots"], 300);
    assert_eq!(v["nextfit"]["smallest"]["nslabs"], 512);
    assert_eq!(v["nextfit"]["swiotlb"], "swiotlb=512,2");
    assert_eq!(v["fast"]["smallest"]["failures"], 0);
    assert!(v["dynamic"]["config"]
        .as_str()
        .unwrap()
        .starts_with("GrowConfig::new("));
    let text =
        String::from_utf8(swiotlb(&["size", path.to_str().unwrap(), "--nareas", "2"]).stdout)
            .unwrap();
    assert!(
        text.contains("kernel command line:  swiotlb=512,2"),
        "{text}"
    );
    // A tighter margin does not change a pool that already keeps it.
    let v = json(&swiotlb(&[
        "size",
        path.to_str().unwrap(),
        "--nareas",
        "2",
        "--margin",
        "50",
        "--json",
    ]));
    assert_eq!(
        v["nextfit"]["recommended"]["nslabs"], 1024,
        "300 of 512 is more than half"
    );
}

#[test]
fn bad_input_is_refused_plainly() {
    let out = swiotlb(&["replay", "/nonexistent/trace"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/trace"));
    let path = file("ramp-bad.trace", &ramp(2, 100, 0));
    let out = swiotlb(&[
        "replay",
        path.to_str().unwrap(),
        "--min-align",
        "nvme0=0x1001",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("2^n - 1"));
    // Bounces alone: no release times, no size.
    let only = file(
        "bounced-only.trace",
        &line(
            1,
            2,
            0,
            "swiotlb_bounced: dev_name: nvme0 dma_mask=ffffffff dev_addr=1000 size=512 NORMAL",
        ),
    );
    let out = swiotlb(&["size", only.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("before 6.12"));
    let v = json(&swiotlb(&["replay", only.to_str().unwrap(), "--json"]));
    assert!(v["io_tlb_used_hiwater"].is_null());
    assert_eq!(v["era"], "bounced-only");
    // A malformed line is reported with its number, and the replay goes on.
    let mut text = ramp(2, 100, 0);
    text.push_str("this is not a trace line\n");
    let path = file("ramp-malformed.trace", &text);
    let v = json(&swiotlb(&["replay", path.to_str().unwrap(), "--json"]));
    assert_eq!(v["malformed"]["count"], 1);
    assert!(
        v["malformed"]["first"][0]
            .as_str()
            .unwrap()
            .starts_with("line 11:"),
        "{v}"
    );
    assert_eq!(v["mappings"], 2);
}

#[test]
fn replay_and_size_draw_the_pool_over_trace_time() {
    // 100 bounces of 3 slots in 256 slots: 64 fit, 36 fail (see above).
    let path = file("ramp-plot.trace", &ramp(100, 5000, 5));
    let svg = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ramp.svg");
    let out = swiotlb(&[
        "replay",
        path.to_str().unwrap(),
        "--nslabs",
        "256",
        "--nareas",
        "1",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("well-formed SVG");
    let texts: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .map(str::trim)
        .collect();
    assert!(
        texts.contains(&"replay of ramp-plot.trace: nextfit, 256 slots x 1 areas"),
        "{texts:?}"
    );
    assert!(
        texts.contains(&"ramp") && texts.contains(&"full"),
        "{texts:?}"
    );
    assert!(texts.contains(&"36 failed maps"), "{texts:?}");
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("Occupancy at the peak: 192 of 256 slots held")),
        "{texts:?}"
    );
    // size --plot draws the recommended pool's replay.
    let svg = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ramp-size.svg");
    let out = swiotlb(&[
        "size",
        path.to_str().unwrap(),
        "--nareas",
        "1",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.contains("replayed on swiotlb=512,1"),
        "size picks 512 slots for 300 live"
    );
}

/// The README's replay of the shipped sample is what the command prints,
/// and its `size` line is what `size` prints.
#[test]
fn the_readme_shows_what_the_sample_gives() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = &readme[readme
        .find("## Sizing a kernel's pool")
        .expect("the section")..];
    let shown = section
        .split("```text\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a text block");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_swiotlb"))
            .args(args)
            .current_dir(&root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let sample = [
        "samples/sev-nvme.trace.gz",
        "--dmesg",
        "samples/sev-nvme.dmesg",
    ];
    let replay: Vec<&str> = ["replay"].iter().chain(&sample).copied().collect();
    assert_eq!(run(&replay), shown);
    let size: Vec<&str> = ["size"].iter().chain(&sample).copied().collect();
    let line = run(&size)
        .lines()
        .find(|l| l.contains("kernel command line:"))
        .unwrap()
        .trim()
        .to_string();
    assert!(section.contains(&format!("`{line}`")), "{line}");
}
