//! Interleaved timing: several contenders sampled round-robin, the median
//! of each reported.
//!
//! A machine drifts (frequency scaling, a neighbour on the host, the page
//! cache): timing one contender for a while and then the next would charge
//! the drift to whichever ran at the bad moment. Taking one sample of each
//! in turn, many times over, spreads it over all of them alike, and the
//! median drops the samples a burst of noise hit.

use std::time::Duration;

use crate::error::Error;

/// Runs `iters` operations and returns how long they took (the contender
/// times itself, so that set-up such as spawning threads stays outside).
pub(crate) type Run<'a> = Box<dyn FnMut(u64) -> Result<Duration, Error> + 'a>;

/// One thing being measured.
pub(crate) struct Contender<'a> {
    run: Run<'a>,
    iters: u64,
    /// Nanoseconds per operation, one value per sample.
    samples: Vec<f64>,
}

impl<'a> Contender<'a> {
    pub(crate) fn new(run: Run<'a>) -> Self {
        Self {
            run,
            iters: 1,
            samples: Vec::new(),
        }
    }
}

/// The median and the relative spread of a contender's samples.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Summary {
    /// Median of the samples (nanoseconds per operation when sampled by
    /// [`interleave`]).
    pub(crate) median: f64,
    /// Interquartile range over the median: how much to trust `ns`.
    pub(crate) spread: f64,
}

/// How long each sample runs and how many rounds are taken.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sampling {
    pub(crate) reps: usize,
    pub(crate) target: Duration,
}

/// Measures every contender `reps` times, round-robin, each sample a batch
/// of operations lasting about `target`, long enough that the timer's own
/// cost vanishes.
pub(crate) fn interleave(
    contenders: &mut [Contender<'_>],
    s: Sampling,
) -> Result<Vec<Summary>, Error> {
    // Calibrating also warms each contender up (caches, page tables,
    // branch predictors) before anything is recorded.
    for c in contenders.iter_mut() {
        c.iters = calibrate(&mut c.run, s.target)?;
        c.samples.clear();
    }
    let k = contenders.len();
    for rep in 0..s.reps {
        // Rotating the starting contender keeps any one of them from always
        // following the same neighbour (say, the one that flushes caches).
        for j in 0..k {
            let c = &mut contenders[(rep + j) % k];
            let t = (c.run)(c.iters)?;
            c.samples.push(t.as_nanos() as f64 / c.iters as f64);
        }
    }
    Ok(contenders.iter().map(|c| summarize(&c.samples)).collect())
}

/// The batch size that makes one sample last about `target`.
fn calibrate(run: &mut Run<'_>, target: Duration) -> Result<u64, Error> {
    let mut n = 1u64;
    loop {
        let t = run(n)?;
        // A quarter of the target is long enough to extrapolate from, and
        // keeps calibration cheap for slow contenders.
        if t >= target / 4 || n >= 1 << 40 {
            let per = t.as_secs_f64().max(1e-9) / n as f64;
            return Ok(((target.as_secs_f64() / per).ceil() as u64).max(1));
        }
        n *= 2;
    }
}

/// Median and interquartile spread of `v` (nearest-rank quartiles).
pub(crate) fn summarize(v: &[f64]) -> Summary {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return Summary {
            median: f64::NAN,
            spread: f64::NAN,
        };
    }
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    let median = at(0.5);
    Summary {
        median,
        spread: (at(0.75) - at(0.25)) / median,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_takes_the_median() {
        let s = summarize(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!(s.median, 3.0);
        assert!((s.spread - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn interleave_samples_each_contender() {
        let mut calls = [0u64; 2];
        let (a, b) = calls.split_at_mut(1);
        let mut cs = vec![
            Contender::new(Box::new(|n| {
                a[0] += n;
                Ok(Duration::from_nanos(n))
            })),
            Contender::new(Box::new(|n| {
                b[0] += n;
                Ok(Duration::from_nanos(3 * n))
            })),
        ];
        let s = Sampling {
            reps: 3,
            target: Duration::from_micros(10),
        };
        let r = interleave(&mut cs, s).unwrap();
        assert_eq!(r[0].median, 1.0);
        assert_eq!(r[1].median, 3.0);
        drop(cs);
        assert!(calls.iter().all(|&c| c > 0));
    }
}
