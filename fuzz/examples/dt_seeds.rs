//! Writes the `dt` target's seed corpus: descriptions drawn from a fixed
//! generator, kept when they give pools with devices or one of each
//! refusal, each written twice, as the description (mode byte 1) and as
//! the blob it builds (mode byte 0), so the blob mode starts from valid
//! trees.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example dt_seeds -- fuzz/corpus/dt`

use std::collections::BTreeSet;
use std::path::PathBuf;

use arbitrary::{Arbitrary, Unstructured};
use swiotlb_fuzz::dt::Spec;

/// Bytes from xorshift64*, seeded.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).expect("the corpus directory"));
    std::fs::create_dir_all(&dir).expect("corpus directory");
    let mut kept = 0;
    let mut trees = 0;
    let mut refusals = BTreeSet::new();
    for seed in 0..20_000u64 {
        let raw = bytes(seed, 40 + (seed % 160) as usize);
        let Ok(spec) = Spec::arbitrary(&mut Unstructured::new(&raw)) else {
            continue;
        };
        let keep = match spec.expect() {
            Ok(pools) => {
                let keep = trees < 16 && pools.iter().any(|p| !p.devices.is_empty());
                trees += usize::from(keep);
                keep
            }
            Err(problems) => refusals.insert(problems[0]),
        };
        if !keep {
            continue;
        }
        kept += 1;
        let mut described = vec![1u8];
        described.extend_from_slice(&raw);
        let mut blob = vec![0u8];
        blob.extend_from_slice(&spec.blob());
        std::fs::write(dir.join(format!("spec-{seed:05}")), described).expect("write");
        std::fs::write(dir.join(format!("blob-{seed:05}")), blob).expect("write");
    }
    println!("{kept} seeds, {trees} trees with devices, refusals: {refusals:?}");
}
