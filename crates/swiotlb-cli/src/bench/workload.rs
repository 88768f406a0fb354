//! Pool states the measurements start from: pre-faulted, filled with live
//! mappings of mixed sizes, churned until a map fails.

use swiotlb::{Device, Direction, Error, Mapping, Policy, Pool};

/// A live mapping of a heap buffer.
pub type Live<'p, P> = Mapping<'p, Vec<u8>, P>;

/// xorshift64*: small, seedable and the same on every platform, so two runs
/// (and the two policies in one run) see the same sequence of sizes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // A zero state would stay zero.
        Self((seed ^ 0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[0, n)`, `n > 0`.
    pub fn below(&mut self, n: usize) -> usize {
        // Multiply-shift: no modulo bias worth speaking of at these sizes.
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// Log-uniform in `[lo, hi]`: each power of two between them is as
    /// likely, as I/O sizes roughly are (a few big transfers, many small
    /// ones, every octave represented).
    pub fn log_uniform(&mut self, lo: usize, hi: usize) -> usize {
        let (a, b) = ((lo as f64).ln(), (hi as f64).ln());
        ((a + (b - a) * self.unit()).exp() as usize).clamp(lo, hi)
    }
}

/// Smallest and largest size of the mixed workloads.
pub const MIX_LO: usize = 512;
pub const MIX_HI: usize = 64 * 1024;

/// How mapping sizes between [`MIX_LO`] and [`MIX_HI`] are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    /// Log-uniform: each octave equally likely (the workload; most
    /// mappings are small).
    LogUniform,
    /// Uniform in bytes (most mappings are large): the mix behind the
    /// "about three quarters live at the first failure" reported for
    /// Linux.
    Uniform,
}

impl Mix {
    pub fn draw(self, rng: &mut Rng) -> usize {
        match self {
            Mix::LogUniform => rng.log_uniform(MIX_LO, MIX_HI),
            Mix::Uniform => MIX_LO + rng.below(MIX_HI - MIX_LO + 1),
        }
    }
}

/// Writes every slot of the pool once, through mappings, so that the
/// page faults of fresh heap memory are not charged to whichever policy
/// first touches a page (the next-fit walk would touch all of them).
pub fn prefault<P: Policy>(pool: &Pool<P>, dev: &Device) -> Result<(), String> {
    let chunk = pool.max_mapping_size(dev.min_align_mask());
    let mut live = Vec::new();
    loop {
        match pool.map(dev, vec![0u8; chunk], Direction::ToDevice) {
            Ok(m) => live.push(m),
            Err(f) if matches!(f.error, Error::PoolFull { .. }) => break,
            Err(f) => {
                return Err(format!(
                    "pre-faulting the {} pool: {}",
                    pool.policy_name(),
                    f.error
                ))
            }
        }
    }
    // Dropping a mapping unmaps it without copying back.
    drop(live);
    // A remainder smaller than a chunk is touched by the smaller mappings
    // that follow; it is at most one chunk of the pool.
    Ok(())
}

/// Slots held over slots in the pool.
pub fn slot_fill<P: Policy>(pool: &Pool<P>) -> f64 {
    pool.stats().io_tlb_used as f64 / pool.nslabs() as f64
}

/// Fills `pool` with live mappings of log-uniform sizes until `fill` of
/// its slots are held, then churns (frees a random one, refills to the
/// target) so that the holes are those of a pool in use rather than one
/// tidy run of free slots at the end.
pub fn fill_to<'p, P: Policy>(
    pool: &'p Pool<P>,
    dev: &Device,
    fill: f64,
    rng: &mut Rng,
) -> Result<Vec<Live<'p, P>>, String> {
    let target = (fill * pool.nslabs() as f64) as u64;
    let mut live: Vec<Live<'p, P>> = Vec::new();
    let mut used = 0u64;
    let slot = pool.slot_size() as u64;
    let top_up = |live: &mut Vec<Live<'p, P>>, used: &mut u64, rng: &mut Rng| {
        while *used < target {
            let n = rng.log_uniform(MIX_LO, MIX_HI);
            match pool.map(dev, vec![0u8; n], Direction::ToDevice) {
                Ok(m) => {
                    *used += (n as u64).div_ceil(slot);
                    live.push(m);
                }
                // Full short of the target: the pool is as full as this mix
                // gets it.
                Err(f) if matches!(f.error, Error::PoolFull { .. }) => break,
                Err(f) => return Err(f.error.to_string()),
            }
        }
        Ok(())
    };
    top_up(&mut live, &mut used, rng)?;
    for _ in 0..2 * live.len() {
        if live.is_empty() {
            break;
        }
        let m = live.swap_remove(rng.below(live.len()));
        used -= (m.len() as u64).div_ceil(slot);
        drop(m);
        top_up(&mut live, &mut used, rng)?;
    }
    Ok(live)
}

/// How one fragmentation trial ended.
#[derive(Clone, Copy, Debug)]
pub enum Trial {
    /// Every step mapped.
    Survived,
    /// The first `PoolFull`: live bytes and held slots over the pool's, and
    /// the step it came at (`None`: while filling).
    Failed {
        bytes: f64,
        slots: f64,
        step: Option<u64>,
    },
}

/// Fills the pool to `n` live mappings of log-uniform sizes, then replaces
/// one random mapping per step, `steps` times; stops at the first
/// `PoolFull`.
pub fn churn<P: Policy>(
    pool: &Pool<P>,
    dev: &Device,
    n: usize,
    steps: u64,
    seed: u64,
    mix: Mix,
) -> Result<Trial, String> {
    let mut rng = Rng::new(seed);
    let mut live: Vec<Live<'_, P>> = Vec::with_capacity(n);
    let mut bytes = 0u64;
    let pool_bytes = pool.len() as f64;
    let failed = |bytes: u64, step| Trial::Failed {
        bytes: bytes as f64 / pool_bytes,
        slots: slot_fill(pool),
        step,
    };
    while live.len() < n {
        let len = mix.draw(&mut rng);
        match pool.map(dev, vec![0u8; len], Direction::ToDevice) {
            Ok(m) => {
                bytes += len as u64;
                live.push(m);
            }
            Err(f) if matches!(f.error, Error::PoolFull { .. }) => return Ok(failed(bytes, None)),
            Err(f) => return Err(f.error.to_string()),
        }
    }
    for step in 0..steps {
        let m = live.swap_remove(rng.below(n));
        bytes -= m.len() as u64;
        let mut buf = m.unmap();
        let len = mix.draw(&mut rng);
        buf.resize(len, 0);
        match pool.map(dev, buf, Direction::ToDevice) {
            Ok(m) => {
                bytes += len as u64;
                live.push(m);
            }
            Err(f) if matches!(f.error, Error::PoolFull { .. }) => {
                return Ok(failed(bytes, Some(step)))
            }
            Err(f) => return Err(f.error.to_string()),
        }
    }
    Ok(Trial::Survived)
}

/// What the search for the first failure found.
#[derive(Clone, Copy, Debug)]
pub struct FirstFailure {
    /// Live mappings the failing trial held.
    pub live: usize,
    pub bytes: f64,
    pub slots: f64,
    pub step: Option<u64>,
    /// Trials run.
    pub trials: u32,
}

/// Raises the number of live mappings until churning fails: a binary
/// search between none and the count at which filling alone fails, each
/// trial from an empty pool with the same seed. Returns the failure with
/// the fewest live mappings: the fill a pool in steady use can be trusted
/// to. Every trial gets a new pool from `new_pool`, so that its outcome
/// depends on the live count and the seed alone, not on where an earlier
/// trial left a search hint.
pub fn first_failure<P: Policy>(
    new_pool: &dyn Fn() -> Result<Pool<P>, String>,
    dev: &Device,
    steps: u64,
    seed: u64,
    mix: Mix,
) -> Result<FirstFailure, String> {
    // The pool cannot hold more mappings than it has slots, so that many
    // fails while filling: an upper bound that surely fails.
    let mut hi = new_pool()?.nslabs() as usize + 1;
    let mut found = match churn(&new_pool()?, dev, hi, 0, seed, mix)? {
        Trial::Failed { bytes, slots, step } => FirstFailure {
            live: hi,
            bytes,
            slots,
            step,
            trials: 1,
        },
        Trial::Survived => return Err("the fragmentation pool never filled".into()),
    };
    let mut lo = 0;
    let mut trials = 1;
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        trials += 1;
        match churn(&new_pool()?, dev, mid, steps, seed, mix)? {
            Trial::Survived => lo = mid,
            Trial::Failed { bytes, slots, step } => {
                hi = mid;
                found = FirstFailure {
                    live: mid,
                    bytes,
                    slots,
                    step,
                    trials,
                };
            }
        }
    }
    found.trials = trials;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_uniform_stays_in_range() {
        let mut r = Rng::new(1);
        let mut small = 0;
        for _ in 0..10_000 {
            let n = r.log_uniform(MIX_LO, MIX_HI);
            assert!((MIX_LO..=MIX_HI).contains(&n));
            small += usize::from(n < 4096);
        }
        // 512..4096 is three of the seven octaves.
        assert!((3500..5000).contains(&small), "{small}");
    }

    #[test]
    fn below_stays_below() {
        let mut r = Rng::new(7);
        assert!((0..1000).all(|_| r.below(3) < 3));
    }
}
