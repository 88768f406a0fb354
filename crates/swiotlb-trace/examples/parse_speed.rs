//! How fast the trace parser reads: about a million lines of a DMA
//! workload, generated in memory, parsed plain and gzip-compressed.
//!
//! `cargo run --release -p swiotlb-trace --example parse_speed [LINES]`

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Instant;

use swiotlb_trace::{Parser, Record};

/// A trace of `n` lines: maps and unmaps of three devices, syncs, a
/// scatterlist now and then, an event of another subsystem, a marker.
fn trace(n: usize) -> String {
    let mut s = String::with_capacity(n * 150);
    let devices = ["0000:01:00.0", "0000:00:04.0", "0000:00:1f.6"];
    let mut i = 0usize;
    while i < n {
        let dev = devices[i % 3];
        let cpu = i % 8;
        let ts = 1000.0 + i as f64 * 1e-6;
        let task = if cpu == 0 { "kworker/u16:2-ev" } else { "fio" };
        let head = format!("{task:>16}-{} [{cpu:03}] d..1. {ts:12.6}: ", 1000 + cpu);
        let addr = 0xfbe0_0000u64 + (i as u64 % 4096) * 0x1000;
        let phys = 0x2_0000_0000u64 + i as u64 * 0x1000;
        let body = match i % 10 {
            0..=2 => format!("dma_map_page: {dev} dir=TO_DEVICE dma_addr={addr:x} size=4096 phys_addr={phys:x} attrs="),
            3..=5 => format!("dma_unmap_page: {dev} dir=TO_DEVICE dma_addr={addr:x} size=4096 attrs="),
            6 => format!("dma_sync_single_for_cpu: {dev} dir=FROM_DEVICE dma_addr={addr:x} size=512"),
            7 => format!(
                "dma_map_sg: {dev} dir=FROM_DEVICE nents=4/4 ents=4/4 dma_addrs={{{:#x},{:#x},{:#x},{:#x}}} sizes={{0x1000,0x1000,0x1000,0x800}} phys_addrs={{{:#x},{:#x},{:#x},{:#x}}} attrs=",
                addr, addr + 0x1000, addr + 0x2000, addr + 0x3000, phys, phys + 0x1000, phys + 0x2000, phys + 0x3000
            ),
            8 => "block_rq_issue: 259,0 W 4096 () 8 + 8 [fio]".to_string(),
            _ => format!("dma_unmap_sg: {dev} dir=FROM_DEVICE phys_addrs={{{:#x},{:#x},{:#x},{:#x}}} attrs=", phys, phys + 0x1000, phys + 0x2000, phys + 0x3000),
        };
        let _ = writeln!(s, "{head}{body}");
        i += 1;
    }
    s
}

/// Parses `input` `rounds` times on this thread; prints the best round
/// (the one least disturbed by the rest of the machine).
fn run(label: &str, input: &[u8], lines: usize, rounds: usize) {
    let mut best = f64::MAX;
    let mut counts = None;
    for _ in 0..rounds {
        let start = Instant::now();
        let mut p = Parser::new(input);
        let mut mapped = 0u64;
        for r in p.by_ref() {
            if let Ok(Record::Event(e)) = r {
                mapped = mapped.wrapping_add(e.timestamp_ns);
            }
        }
        std::hint::black_box(mapped);
        best = best.min(start.elapsed().as_secs_f64());
        counts = Some(p.counts());
    }
    let c = counts.expect("at least one round");
    assert_eq!(c.errors, 0);
    assert_eq!(c.lines, lines as u64);
    println!(
        "{label}: {lines} lines ({} records, {} unknown), best of {rounds}: {:.3} s, {:.2} million lines/s, {:.0} MB/s",
        c.records,
        c.unknown,
        best,
        lines as f64 / best / 1e6,
        input.len() as f64 / best / 1e6,
    );
}

fn main() {
    let n = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let text = trace(n);
    run("plain", text.as_bytes(), n, 5);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes())
        .expect("compressing in memory");
    let gz = gz.finish().expect("compressing in memory");
    run("gzip ", &gz, n, 3);
}
