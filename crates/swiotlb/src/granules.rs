//! Which of a growing tlb's pools holds an address, in constant time.
//!
//! The address space is cut into granules of `2^shift` bytes, with
//! `2^shift` no larger than the smallest pool, so that no pool fits inside
//! one granule and a granule meets at most two pools: one that covers its
//! first byte and one that starts inside it. A hash table maps each
//! granule any pool touches to those two, by their index in the address-
//! sorted list of pools. A lookup hashes the address's granule, picks one
//! of the two by comparing with the second's start, and checks the pool's
//! bounds: a few loads however many pools there are, where a binary search
//! over 10,000 pools is a chain of 14 dependent loads.
//!
//! The table is rebuilt whenever a pool comes or goes (rare, and already
//! linear in the pool count because the sorted list shifts). When pools
//! differ so much in size that the table would hold far more granules
//! than there are pools, it is not built and lookups fall back to the
//! binary search.

#![forbid(unsafe_code)]

use alloc::vec;
use alloc::vec::Vec;

/// No pool.
const NONE: u32 = u32::MAX;

/// One granule's entry.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// The granule number plus one; 0 marks an empty slot.
    key: u64,
    /// The pool covering the granule's first byte, or [`NONE`].
    low: u32,
    /// The pool starting inside the granule after its first byte, or
    /// [`NONE`].
    high: u32,
}

const EMPTY: Slot = Slot {
    key: 0,
    low: NONE,
    high: NONE,
};

/// The granule index of a set of pools. See the module documentation.
#[derive(Debug)]
pub(crate) struct Granules {
    shift: u32,
    /// log2 of the table's length.
    bits: u32,
    slots: Vec<Slot>,
}

/// The table may hold this many granules per pool (plus [`SLACK`]) before
/// lookups fall back to the binary search: pools of a growing tlb come in
/// two sizes (the first pool and the grown ones), so a few granules per
/// pool is the usual case.
const MAX_PER_POOL: u64 = 8;
const SLACK: u64 = 64;

impl Granules {
    /// The index of the pools `[starts[i], lasts[i]]` (inclusive ends),
    /// sorted by address and not overlapping; `None` when pools differ too
    /// much in size for a small table, or there are none.
    pub(crate) fn build(starts: &[u64], lasts: &[u64]) -> Option<Self> {
        debug_assert_eq!(starts.len(), lasts.len());
        let smallest = starts.iter().zip(lasts).map(|(s, l)| l - s).min()?;
        // 2^shift <= smallest pool's length (`smallest + 1` bytes, which
        // may not fit in a u64: then one granule is the whole space).
        let shift = match smallest.checked_add(1) {
            Some(len) => 63 - len.leading_zeros(),
            None => 63,
        };
        // One-byte granules would let `granule + 1` overflow at the top of
        // the space; no pool is that small (a slot is at least 512 bytes).
        if shift == 0 {
            return None;
        }
        let granules: u64 = starts
            .iter()
            .zip(lasts)
            .map(|(s, l)| (l >> shift) - (s >> shift) + 1)
            .sum();
        if granules > MAX_PER_POOL * starts.len() as u64 + SLACK {
            return None;
        }
        // At most three quarters full, so probes stay short.
        let bits = (granules + granules / 3 + 1)
            .next_power_of_two()
            .trailing_zeros()
            .max(1);
        let mut g = Self {
            shift,
            bits,
            slots: vec![EMPTY; 1 << bits],
        };
        for (i, (&s, &l)) in starts.iter().zip(lasts).enumerate() {
            for granule in (s >> shift)..=(l >> shift) {
                let slot = g.slot_mut(granule);
                if granule << shift >= s {
                    slot.low = i as u32;
                } else {
                    slot.high = i as u32;
                }
            }
        }
        Some(g)
    }

    /// The table position of `granule`'s hash.
    #[inline]
    fn home(&self, granule: u64) -> usize {
        // Fibonacci hashing: the top bits of a multiply by 2^64 / phi.
        (granule.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - self.bits)) as usize
    }

    /// The slot of `granule`, claimed if it has none yet.
    fn slot_mut(&mut self, granule: u64) -> &mut Slot {
        let mask = self.slots.len() - 1;
        let mut at = self.home(granule);
        loop {
            let key = self.slots[at].key;
            if key == 0 {
                self.slots[at].key = granule + 1;
                return &mut self.slots[at];
            }
            if key == granule + 1 {
                return &mut self.slots[at];
            }
            at = (at + 1) & mask;
        }
    }

    /// The index of the pool that holds `addr`, given the same `starts`
    /// and `lasts` the table was built from.
    #[inline]
    pub(crate) fn find(&self, addr: u64, starts: &[u64], lasts: &[u64]) -> Option<usize> {
        let granule = addr >> self.shift;
        let mask = self.slots.len() - 1;
        let mut at = self.home(granule);
        let slot = loop {
            let s = self.slots[at];
            if s.key == granule + 1 {
                break s;
            }
            if s.key == 0 {
                return None;
            }
            at = (at + 1) & mask;
        };
        let i = match slot.high {
            NONE => slot.low,
            h if addr >= starts[h as usize] => h,
            _ => slot.low,
        };
        if i == NONE {
            return None;
        }
        let i = i as usize;
        (starts[i] <= addr && addr <= lasts[i]).then_some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool holding `addr`, by looking at every pool.
    fn naive(addr: u64, starts: &[u64], lasts: &[u64]) -> Option<usize> {
        (0..starts.len()).find(|&i| starts[i] <= addr && addr <= lasts[i])
    }

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Random sets of pools (sizes from one to a few granules, unaligned,
    /// touching or apart), probed at every pool's edges and at random:
    /// the index agrees with a scan of every pool.
    #[test]
    fn agrees_with_a_scan() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut built = 0;
        // Fewer under miri, which runs this a thousand times slower.
        let rounds = if cfg!(miri) { 20 } else { 300 };
        for round in 0..rounds {
            let n = 1 + (rng.next() % 40) as usize;
            let unit = 1u64 << (9 + rng.next() % 8);
            let mut starts = Vec::new();
            let mut lasts = Vec::new();
            let mut at = rng.next() % (1 << 40);
            for _ in 0..n {
                at += match rng.next() % 3 {
                    0 => 0,
                    1 => rng.next() % unit,
                    _ => rng.next() % (16 * unit),
                };
                let len = unit + rng.next() % (3 * unit);
                starts.push(at);
                lasts.push(at + len - 1);
                at += len;
            }
            let Some(g) = Granules::build(&starts, &lasts) else {
                continue;
            };
            built += 1;
            let mut probes: Vec<u64> = Vec::new();
            for i in 0..n {
                for a in [starts[i], lasts[i]] {
                    probes.extend([a.wrapping_sub(1), a, a + 1]);
                }
            }
            for _ in 0..200 {
                let from = starts[0].saturating_sub(unit);
                probes.push(from + rng.next() % (at + unit - from));
            }
            for a in probes {
                assert_eq!(
                    g.find(a, &starts, &lasts),
                    naive(a, &starts, &lasts),
                    "round {round}, address {a:#x}"
                );
            }
        }
        // Every pool is one to four units long, so no set needs many
        // granules per pool.
        assert_eq!(built, rounds, "a set was left unindexed");
    }

    /// Pools of very different sizes would need many granules: no table,
    /// so the caller searches instead.
    #[test]
    fn refuses_a_table_much_larger_than_the_pools() {
        let starts = [0, 1 << 40];
        let lasts = [4095, (1 << 40) + (1 << 30) - 1];
        assert!(Granules::build(&starts, &lasts).is_none());
        assert!(Granules::build(&[], &[]).is_none());
    }

    /// A pool reaching the top of the address space.
    #[test]
    fn the_top_of_the_address_space() {
        let starts = [0, u64::MAX - 4095];
        let lasts = [4095, u64::MAX];
        let g = Granules::build(&starts, &lasts).expect("two equal pools");
        assert_eq!(g.find(u64::MAX, &starts, &lasts), Some(1));
        assert_eq!(g.find(5000, &starts, &lasts), None);
        let whole = Granules::build(&[0], &[u64::MAX]).expect("one pool");
        assert_eq!(whole.find(12345, &[0], &[u64::MAX]), Some(0));
    }
}
