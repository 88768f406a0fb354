//! The sample of the README (`samples/sev-nvme.trace.gz` and
//! `samples/sev-nvme.dmesg`) replayed, and checked against its generator.
//!
//! The generator placed every bounce with the allocator the replay drives
//! (`SlotPool<NextFit>` on the pool the kernel log names), so a replay that
//! pairs the events by Linux's rules must put every bounce where the
//! generator did and fail exactly the maps it failed. These tests are
//! therefore a consistency check of the pairing rules (bounce before the
//! slots, map after them, `dma_unmap_sg` before the release and
//! `dma_unmap_page` after, failed lists given back, the device's address
//! offset and `min_align_mask` learned), not a check of the allocator
//! against Linux.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use swiotlb_trace::replay::{
    read_kernel_log, replay, size, Era, GeometrySource, Options, Report, SizeOptions,
};

#[path = "../examples/make_sample.rs"]
#[expect(dead_code, reason = "the example's `main`, which writes the files")]
mod make_sample;

const NVME: &str = "0000:00:04.0";
const NET: &str = "0000:00:03.0";

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples")
}

fn options() -> Options {
    let log = read_kernel_log(&samples().join("sev-nvme.dmesg")).unwrap();
    let mut o = Options::default();
    o.kernel_log = Some(log);
    o
}

fn trace() -> PathBuf {
    samples().join("sev-nvme.trace.gz")
}

fn device<'a>(r: &'a Report, name: &str) -> &'a swiotlb_trace::replay::DeviceReport {
    r.per_device
        .iter()
        .find(|d| d.name == name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", r.per_device))
}

#[test]
fn the_replay_places_and_fails_every_map_as_the_generator_did() {
    let r = replay(&trace(), &options()).unwrap();
    let json = serde_json::to_string_pretty(&r).unwrap();
    assert_eq!(r.era, Era::Full, "{json}");
    assert_eq!((r.io_tlb_nslabs, r.io_tlb_nareas), (16384, 4));
    assert_eq!(r.geometry_source, GeometrySource::Dmesg);
    assert_eq!(r.pool_base, Some(0xbde0_0000));

    let p = r.placed_exactly.unwrap();
    assert!(p.compared > 1000, "{json}");
    assert_eq!(p.exact, p.compared, "{json}");

    assert!(r.kernel_failures > 0, "{json}");
    assert_eq!(r.failures_compared.both, r.kernel_failures, "{json}");
    assert_eq!(r.failures_compared.only_kernel, 0);
    assert_eq!(r.failures_compared.only_replay, 0);
    assert_eq!(r.failures, r.kernel_failures);
    // printk_ratelimited: some, at most a burst of 10.
    let full = r.kernel_full_messages.unwrap();
    assert!((1..=10).contains(&full), "{json}");

    assert_eq!(r.markers.len(), 4, "{json}");
    assert_eq!(r.markers[3].text, "fio done");
    // The last phase is the one that fills the pool.
    assert!(r.markers[2].io_tlb_used_hiwater > 15_000, "{json}");
    assert!(r.markers[..2]
        .iter()
        .all(|m| m.io_tlb_used_hiwater < 12_000));

    let sev = Some(1u64 << 51);
    let nvme = device(&r, NVME);
    assert_eq!(
        (nvme.min_align_mask, nvme.min_align_source),
        (0xfff, "inferred")
    );
    assert_eq!(nvme.dev_addr_offset, sev);
    assert!(nvme.kernel_failures > 0);
    let net = device(&r, NET);
    assert_eq!((net.min_align_mask, net.min_align_source), (0, "none"));
    assert_eq!(net.dev_addr_offset, sev);

    assert_eq!(r.unpaired.bounces, 0, "{json}");
    assert_eq!(r.unpaired.unmaps, 0, "{json}");
    assert_eq!(r.unpaired.loose_pairs, 0, "{json}");
    assert_eq!(r.unpaired.other_map_errors, 0, "{json}");
    assert_eq!(r.unpaired.reused_addresses, 0, "{json}");
    assert_eq!(r.malformed.count, 0, "{json}");
}

#[test]
fn the_pool_the_kernel_had_is_too_small() {
    let mut o = SizeOptions::default();
    o.replay = options();
    // 128 MiB is plenty for this trace, and quicker to build than the
    // default's largest pool.
    o.max_nslabs = 1 << 16;
    let s = size(&trace(), &o).unwrap();
    assert!(s.kernel_failures > 0);
    assert!(s.nextfit.smallest.nslabs > 16384, "{:?}", s.nextfit);
    assert_eq!(s.nextfit.tried[0].nslabs, 16384);
    assert!(s.nextfit.tried[0].failures > 0);
}

/// The shipped files are what `make_sample` writes today. If this fails
/// after a change to the model or the allocator, regenerate them:
/// `cargo run -p swiotlb-trace --example make_sample -- samples/`.
#[test]
fn the_shipped_files_are_the_generators() {
    let sample = make_sample::generate();
    let mut shipped = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(trace()).unwrap())
        .read_to_string(&mut shipped)
        .unwrap();
    assert!(
        shipped == sample.trace,
        "samples/sev-nvme.trace.gz differs from what make_sample writes; regenerate it"
    );
    let dmesg = std::fs::read_to_string(samples().join("sev-nvme.dmesg")).unwrap();
    assert!(
        dmesg == sample.dmesg,
        "samples/sev-nvme.dmesg differs from what make_sample writes; regenerate it"
    );
}
