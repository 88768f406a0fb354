//! What the demo writes and reads: a seeded mix of request sizes over the
//! first bytes of the disk, and a pattern every byte of which says where
//! it belongs, so a read that lands at the wrong sector, a stale bounce or
//! a short copy-back is caught, and said where.

use crate::rng::{seeded, Rng};
use rand::RngExt as _;

/// The sector size of virtio-blk.
pub(crate) const SECTOR: u64 = 512;

/// One request of a plan: `len` bytes at byte offset `offset` of the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Req {
    pub(crate) offset: u64,
    pub(crate) len: usize,
}

impl Req {
    pub(crate) fn sector(&self) -> u64 {
        self.offset / SECTOR
    }
}

/// Requests covering `[0, total)` back to back, each of a size drawn from
/// `sizes` (the last one cut to what remains). `total` and every size are
/// whole sectors.
pub(crate) fn plan(total: u64, sizes: &[usize], rng: &mut Rng) -> Vec<Req> {
    debug_assert!(total.is_multiple_of(SECTOR) && !sizes.is_empty());
    let mut out = Vec::new();
    let mut at = 0u64;
    while at < total {
        let want = sizes[rng.random_range(0..sizes.len())] as u64;
        let len = want.min(total - at);
        out.push(Req {
            offset: at,
            len: len as usize,
        });
        at += len;
    }
    out
}

/// The request sizes of the mixed run: one sector, then each power of two
/// from 4 KiB up to `largest` (the largest one mapping the pool takes),
/// and `largest` itself.
pub(crate) fn mix(largest: usize) -> Vec<usize> {
    let largest = largest / SECTOR as usize * SECTOR as usize;
    let mut sizes = vec![SECTOR as usize];
    let mut s = 4096;
    while s < largest {
        sizes.push(s);
        s *= 2;
    }
    if largest > SECTOR as usize {
        sizes.push(largest);
    }
    sizes
}

/// The 8 bytes of the pattern at disk offset `word * 8`: SplitMix64 of the
/// word's index and the seed, so no two words of a run, nor of two runs
/// with different seeds, are alike.
fn word(seed: u64, word: u64) -> u64 {
    let mut z = seed ^ word.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `buf` with the pattern of the disk bytes at `offset` (a multiple
/// of 8).
pub(crate) fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let w = word(seed, offset / 8 + i as u64).to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
}

/// The first byte of `buf` that differs from the pattern at `offset`: its
/// disk offset, what was read, what was expected.
pub(crate) fn first_mismatch(seed: u64, offset: u64, buf: &[u8]) -> Option<(u64, u8, u8)> {
    for (i, chunk) in buf.chunks(8).enumerate() {
        let w = word(seed, offset / 8 + i as u64).to_le_bytes();
        if chunk != &w[..chunk.len()] {
            let j = chunk.iter().zip(w).position(|(a, b)| *a != b).unwrap_or(0);
            let at = i * 8 + j;
            return Some((offset + at as u64, buf[at], w[j]));
        }
    }
    None
}

/// A generator for a plan, from the run's seed and the plan's purpose, so
/// the reads are cut differently from the writes.
pub(crate) fn plan_rng(seed: u64, purpose: u64) -> Rng {
    seeded(seed ^ purpose.wrapping_mul(0xd6e8_feb8_6659_fd93))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_covers_the_range_back_to_back_in_whole_sectors() {
        let sizes = mix(256 << 10);
        let mut rng = plan_rng(7, 1);
        let p = plan(64 << 20, &sizes, &mut rng);
        let mut at = 0;
        for r in &p {
            assert_eq!(r.offset, at);
            assert!(r.len > 0 && (r.len as u64).is_multiple_of(SECTOR) && r.len <= 256 << 10);
            at += r.len as u64;
        }
        assert_eq!(at, 64 << 20);
        // Every size of the mix is used.
        for s in &sizes {
            assert!(p.iter().any(|r| r.len == *s), "{s}");
        }
    }

    #[test]
    fn the_mix_runs_from_a_sector_to_the_largest() {
        assert_eq!(
            mix(256 << 10),
            vec![512, 4096, 8192, 16384, 32768, 65536, 131072, 262144]
        );
        assert_eq!(mix(6000), vec![512, 4096, 5632]);
        assert_eq!(mix(512), vec![512]);
    }

    #[test]
    fn the_pattern_names_the_first_wrong_byte() {
        let mut buf = vec![0u8; 4096];
        fill(3, 8192, &mut buf);
        assert_eq!(first_mismatch(3, 8192, &buf), None);
        // The same bytes are wrong at another offset or with another seed.
        assert!(first_mismatch(3, 0, &buf).is_some());
        assert!(first_mismatch(4, 8192, &buf).is_some());
        let good = buf[1000];
        buf[1000] ^= 0xff;
        assert_eq!(
            first_mismatch(3, 8192, &buf),
            Some((9192, good ^ 0xff, good))
        );
    }
}
