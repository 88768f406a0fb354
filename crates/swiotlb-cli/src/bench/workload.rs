//! Pool states the measurements start from: pre-faulted, filled with live
//! mappings of mixed sizes, churned until a map fails.

use swiotlb::sim::SIM_DMA_BASE;
use swiotlb::translate::Offset;
use swiotlb::{Device, Direction, DmaAddr, DmaMask, Mapping, Policy, Pool};

use crate::error::Error;
use crate::rng::{log_uniform, seeded, Rng};
use rand::RngExt as _;

/// A live mapping of a heap buffer.
type Live<'p, P> = Mapping<'p, Vec<u8>, P>;

/// Smallest and largest size of the mixed workloads.
const MIX_LO: usize = 512;
const MIX_HI: usize = 64 * 1024;

/// How mapping sizes between [`MIX_LO`] and [`MIX_HI`] are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mix {
    /// Log-uniform: each octave equally likely (the workload; most
    /// mappings are small).
    LogUniform,
    /// Uniform in bytes (half the mappings are over 32 KiB): a second mix,
    /// to see whether what holds for the first holds where large mappings
    /// dominate.
    Uniform,
}

impl Mix {
    fn draw(self, rng: &mut Rng) -> usize {
        match self {
            Mix::LogUniform => log_uniform(rng, MIX_LO as u64, MIX_HI as u64) as usize,
            Mix::Uniform => rng.random_range(MIX_LO..=MIX_HI),
        }
    }
}

/// Writes every slot of the pool once, through mappings, so that the
/// page faults of fresh heap memory are not charged to whichever policy
/// first touches a page (the next-fit walk would touch all of them).
pub(crate) fn prefault<P: Policy>(pool: &Pool<P>, dev: &Device) -> Result<(), Error> {
    let chunk = pool.max_mapping_size(dev.min_align_mask());
    let mut live = Vec::new();
    loop {
        match pool.map(dev, vec![0u8; chunk], Direction::ToDevice) {
            Ok(m) => live.push(m),
            Err(f) if matches!(f.error, swiotlb::Error::PoolFull { .. }) => break,
            Err(f) => {
                return Err(Error::core(
                    format!("pre-faulting the {} pool", pool.policy_name()),
                    f.error,
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
pub(crate) fn slot_fill<P: Policy>(pool: &Pool<P>) -> f64 {
    pool.stats().io_tlb_used as f64 / pool.nslabs() as f64
}

/// Fills `pool` with live mappings of log-uniform sizes until `fill` of
/// its slots are held, then churns (frees a random one, refills to the
/// target) so that the holes are those of a pool in use rather than one
/// tidy run of free slots at the end.
pub(crate) fn fill_to<'p, P: Policy>(
    pool: &'p Pool<P>,
    dev: &Device,
    fill: f64,
    rng: &mut Rng,
) -> Result<Vec<Live<'p, P>>, Error> {
    let target = (fill * pool.nslabs() as f64) as u64;
    let mut live: Vec<Live<'p, P>> = Vec::new();
    let mut used = 0u64;
    let slot = pool.slot_size() as u64;
    let top_up = |live: &mut Vec<Live<'p, P>>, used: &mut u64, rng: &mut Rng| {
        while *used < target {
            let n = Mix::LogUniform.draw(rng);
            match pool.map(dev, vec![0u8; n], Direction::ToDevice) {
                Ok(m) => {
                    *used += (n as u64).div_ceil(slot);
                    live.push(m);
                }
                // Full short of the target: the pool is as full as this mix
                // gets it.
                Err(f) if matches!(f.error, swiotlb::Error::PoolFull { .. }) => break,
                Err(f) => return Err(Error::from(f.error)),
            }
        }
        Ok(())
    };
    top_up(&mut live, &mut used, rng)?;
    for _ in 0..2 * live.len() {
        if live.is_empty() {
            break;
        }
        let m = live.swap_remove(rng.random_range(0..live.len()));
        used -= (m.len() as u64).div_ceil(slot);
        drop(m);
        top_up(&mut live, &mut used, rng)?;
    }
    Ok(live)
}

/// Areas of a fragmentation pool (see [`first_failure`] for the
/// protocol).
///
/// The count matters more than it looks: `NextFit` in one area of the
/// same 64 MiB first fails at about 0.63 of the bytes live, in two at
/// 0.75-0.76. With every map from one CPU the search starts in the same
/// area and moves on only when nothing fits there, which happens to large
/// requests first: the areas end up sorted by size (at one failure, 2,992
/// mappings of 8 KiB on average in the first, 566 of 45 KiB in the
/// other), and small mappings no longer cut the runs large ones need.
pub(crate) const FRAG_AREAS: u32 = 2;

/// Replacement steps of one fragmentation trial.
pub(crate) const FRAG_STEPS: u64 = 200_000;

/// The device of a fragmentation trial on `pool`: it bounces everything
/// and sees the pool at device address [`SIM_DMA_BASE`] (4 GiB; not 0, which
/// no pool hands out), as `simulate`'s device does.
/// Placement then depends on the pool's slots alone, not on where the heap
/// put it: with identity translation a pool that straddles a 4 GiB line
/// (Linux's default segment boundary) has one more place no mapping may
/// cross, and runs would differ with the heap's address.
fn frag_device<P: Policy>(pool: &Pool<P>) -> Device<Offset> {
    Device::new(DmaMask::BITS_64)
        .with_force_bounce()
        .with_translate(Offset::new(pool.start(), DmaAddr(SIM_DMA_BASE)))
}

/// How one fragmentation trial ended.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Trial {
    /// Every step mapped.
    Survived,
    /// The first `PoolFull`: live bytes and held slots over the pool's
    /// when it came (the failing request not counted), the step it came
    /// at (`None`: while filling), and the mappings live then.
    Failed {
        bytes: f64,
        slots: f64,
        step: Option<u64>,
        live: usize,
    },
}

/// One trial of the protocol (see [`first_failure`]) on a fresh `pool`:
/// fills it to `n` live mappings of sizes drawn from `mix`, then replaces
/// a random one per step, `steps` times; stops at the first `PoolFull`.
///
/// Sizes and choices come from one generator seeded with `seed`, so the
/// sizes drawn while filling are the same for every `n`.
fn churn<P: Policy>(
    pool: &Pool<P>,
    n: usize,
    steps: u64,
    seed: u64,
    mix: Mix,
) -> Result<Trial, Error> {
    let dev = frag_device(pool);
    let mut rng = seeded(seed);
    let mut live: Vec<Live<'_, P>> = Vec::with_capacity(n.min(pool.nslabs() as usize));
    let mut bytes = 0u64;
    let pool_bytes = pool.len() as f64;
    let failed = |bytes: u64, step, live| Trial::Failed {
        bytes: bytes as f64 / pool_bytes,
        slots: slot_fill(pool),
        step,
        live,
    };
    while live.len() < n {
        let len = mix.draw(&mut rng);
        match pool.map(&dev, vec![0u8; len], Direction::ToDevice) {
            Ok(m) => {
                bytes += len as u64;
                live.push(m);
            }
            Err(f) if matches!(f.error, swiotlb::Error::PoolFull { .. }) => {
                return Ok(failed(bytes, None, live.len()))
            }
            Err(f) => return Err(f.error.into()),
        }
    }
    for step in 0..steps {
        let m = live.swap_remove(rng.random_range(0..n));
        bytes -= m.len() as u64;
        // The unmapped buffer carries the next mapping: no allocation per
        // step beyond what a larger size needs.
        let mut buf = m.unmap();
        let len = mix.draw(&mut rng);
        buf.resize(len, 0);
        match pool.map(&dev, buf, Direction::ToDevice) {
            Ok(m) => {
                bytes += len as u64;
                live.push(m);
            }
            Err(f) if matches!(f.error, swiotlb::Error::PoolFull { .. }) => {
                return Ok(failed(bytes, Some(step), live.len()))
            }
            Err(f) => return Err(f.error.into()),
        }
    }
    Ok(Trial::Survived)
}

/// What the search for the first failure found.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FirstFailure {
    /// The smallest live count whose trial failed.
    pub(crate) n: usize,
    /// Live bytes over the pool's at that trial's failure.
    pub(crate) bytes: f64,
    /// Held slots over the pool's then.
    pub(crate) slots: f64,
    /// The step it failed at (`None`: while filling).
    pub(crate) step: Option<u64>,
    /// Trials run.
    pub(crate) trials: u32,
}

/// The fragmentation protocol: the smallest live count `n` whose trial
/// ([`churn`]) fails, by bisection, each trial on a fresh pool from
/// `new_pool` with the same seed, so that its outcome depends on `n` and
/// the seed alone, not on where an earlier trial left a search hint.
///
/// It is the protocol `swiotlb simulate` runs from a script, so that a
/// figure of the bench and one measured with `simulate` mean the same
/// thing: a 64 MiB pool (Linux's default) of [`FRAG_AREAS`] areas, mapped
/// from one CPU (the search starts in one area and falls back to the
/// other, as with `simulate`'s default `cpu=0`), the device seeing the
/// pool at device address [`SIM_DMA_BASE`] with no `min_align_mask` (so an original's
/// address decides nothing); `n` live mappings of sizes drawn from a
/// [`Mix`], replaced at random (a random live one unmapped, a new one
/// mapped) for [`FRAG_STEPS`] steps; reported, the bytes live at the first
/// failure of the smallest failing `n`, over the pool's.
///
/// The first trial fills without ever stopping: it fails while filling
/// with some `k` mappings live, and since every trial draws the same sizes
/// while filling, every `n > k` fails there too. The search runs between
/// none (which survives) and `k + 1`.
pub(crate) fn first_failure<P: Policy>(
    new_pool: &dyn Fn() -> Result<Pool<P>, Error>,
    steps: u64,
    seed: u64,
    mix: Mix,
) -> Result<FirstFailure, Error> {
    // The pool cannot hold more mappings than it has slots.
    let pool = new_pool()?;
    let all = pool.nslabs() as usize + 1;
    let mut found = match churn(&pool, all, 0, seed, mix)? {
        Trial::Failed {
            bytes,
            slots,
            step,
            live,
        } => FirstFailure {
            n: live + 1,
            bytes,
            slots,
            step,
            trials: 1,
        },
        Trial::Survived => return Err(Error::Bench("the fragmentation pool never filled".into())),
    };
    drop(pool);
    let mut lo = 0;
    let mut hi = found.n;
    let mut trials = 1;
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        trials += 1;
        match churn(&new_pool()?, mid, steps, seed, mix)? {
            Trial::Survived => lo = mid,
            Trial::Failed {
                bytes, slots, step, ..
            } => {
                hi = mid;
                found = FirstFailure {
                    n: mid,
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
    use swiotlb::sim::{SimError, Simulator};
    use swiotlb::{Fast, NextFit, PoolConfig};

    /// A 1 MiB pool of the protocol's geometry: 512 slots, 2 areas.
    fn small<P: Policy>() -> Result<Pool<P>, Error> {
        Ok(Pool::new_heap(1 << 20, PoolConfig::with_areas(FRAG_AREAS))?)
    }

    const STEPS: u64 = 2_000;

    /// The device sees the pool at `SIM_DMA_BASE`, wherever the heap put it.
    #[test]
    fn the_device_sees_the_pool_at_the_sim_base() {
        let pool = small::<Fast>().unwrap();
        assert_eq!(pool.nareas(), FRAG_AREAS);
        let dev = frag_device(&pool);
        let m = pool
            .map(&dev, vec![1u8; 3000], Direction::ToDevice)
            .unwrap();
        assert!(m.is_bounced());
        let off = m.dma_addr().0.wrapping_sub(SIM_DMA_BASE);
        assert!(off < pool.len() as u64, "{:?}", m.dma_addr());
    }

    /// Every trial fills with the same sizes, so a count above the one
    /// at which filling fails fails at the same point.
    #[test]
    fn filling_fails_alike_for_every_larger_count() {
        for mix in [Mix::LogUniform, Mix::Uniform] {
            let all = small::<Fast>().unwrap().nslabs() as usize + 1;
            let first = churn(&small::<Fast>().unwrap(), all, 0, 3, mix).unwrap();
            let Trial::Failed {
                step: None, live, ..
            } = first
            else {
                panic!("{mix:?}: filling did not fail: {first:?}");
            };
            for n in [live + 1, live + 7, all / 2] {
                let t = churn(&small::<Fast>().unwrap(), n, STEPS, 3, mix).unwrap();
                assert_eq!(t, first, "{mix:?}, {n} live");
            }
        }
    }

    /// The search ends on a failing count whose predecessor survives, and
    /// reports that trial's failure; the same seed gives the same answer.
    fn bisection_brackets_the_first_failure<P: Policy>() {
        for (seed, mix) in [
            (1, Mix::LogUniform),
            (2, Mix::LogUniform),
            (1, Mix::Uniform),
        ] {
            let f = first_failure(&small::<P>, STEPS, seed, mix).unwrap();
            assert!(f.n > 1, "{f:?}");
            let at = churn(&small::<P>().unwrap(), f.n, STEPS, seed, mix).unwrap();
            let Trial::Failed {
                bytes, slots, step, ..
            } = at
            else {
                panic!("{} live survived: {f:?}", f.n);
            };
            assert_eq!((bytes, slots, step), (f.bytes, f.slots, f.step));
            assert!(bytes > 0.0 && bytes < 1.0 && slots <= 1.0, "{f:?}");
            let below = churn(&small::<P>().unwrap(), f.n - 1, STEPS, seed, mix).unwrap();
            assert_eq!(below, Trial::Survived, "{} live: {f:?}", f.n - 1);
            let again = first_failure(&small::<P>, STEPS, seed, mix).unwrap();
            assert_eq!((again.n, again.bytes), (f.n, f.bytes));
        }
    }

    /// The trial `swiotlb simulate` runs from a script of the same sizes
    /// and victims: `map ID SIZE dir=to` (so `cpu=0`, `orig=0`) and
    /// `unmap ID` through the simulator, on a pool of `nslabs` slots in
    /// the protocol's areas.
    fn simulated<P: Policy>(nslabs: u32, n: usize, steps: u64, seed: u64, mix: Mix) -> Trial {
        let mut sim = Simulator::<P, u64>::new(nslabs, PoolConfig::with_areas(FRAG_AREAS)).unwrap();
        let mut rng = seeded(seed);
        let mut live: Vec<(u64, usize)> = Vec::new();
        let (mut ids, mut bytes) = (0u64, 0usize);
        let pool_bytes = sim.pool().len() as f64;
        let mut step = None;
        loop {
            let len = mix.draw(&mut rng);
            match sim.map(ids, len, Direction::ToDevice) {
                Ok(_) => {
                    live.push((ids, len));
                    ids += 1;
                    bytes += len;
                }
                Err(SimError::Engine(swiotlb::Error::PoolFull { .. })) => {
                    return Trial::Failed {
                        bytes: bytes as f64 / pool_bytes,
                        slots: sim.stats().io_tlb_used as f64 / f64::from(nslabs),
                        step,
                        live: live.len(),
                    }
                }
                Err(e) => panic!("simulate: {e}"),
            }
            if live.len() < n {
                continue;
            }
            let next = step.map_or(0, |s| s + 1);
            if next == steps {
                return Trial::Survived;
            }
            step = Some(next);
            let (id, len) = live.swap_remove(rng.random_range(0..n));
            sim.unmap(&id).unwrap();
            bytes -= len;
        }
    }

    /// A trial of the bench and the same trial through `simulate`'s
    /// simulator end alike, step for step: the bench measures what
    /// `simulate` measures.
    fn trials_match_simulate<P: Policy>() {
        for (seed, mix) in [(5, Mix::LogUniform), (6, Mix::Uniform)] {
            let f = first_failure(&small::<P>, STEPS, seed, mix).unwrap();
            for n in [f.n - 1, f.n, f.n + 5, 10_000] {
                let pool = small::<P>().unwrap();
                let bench = churn(&pool, n, STEPS, seed, mix).unwrap();
                let sim = simulated::<P>(pool.nslabs(), n, STEPS, seed, mix);
                assert_eq!(bench, sim, "{}, {mix:?}, {n} live", P::NAME);
            }
        }
    }

    #[test]
    fn trials_match_simulate_fast() {
        trials_match_simulate::<Fast>();
    }

    #[test]
    fn trials_match_simulate_nextfit() {
        trials_match_simulate::<NextFit>();
    }

    #[test]
    fn bisection_brackets_the_first_failure_fast() {
        bisection_brackets_the_first_failure::<Fast>();
    }

    #[test]
    fn bisection_brackets_the_first_failure_nextfit() {
        bisection_brackets_the_first_failure::<NextFit>();
    }
}
