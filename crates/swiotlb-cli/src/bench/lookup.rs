//! Unmap lookup in a growing tlb with 1, 100 and 10,000 pools.
//!
//! An unmap or sync of a growing tlb first finds the pool holding the
//! address. Ours hashes the address's granule to the pools over it
//! (`policy` `fast` in the rows); Linux walks its list of pools (`policy`
//! `nextfit`, the Linux-faithful row, measured here as a walk over the same
//! ranges in the same process). A third row times a whole 64-byte raw
//! map+unmap pair in a tlb of that many pools, the map landing in the pool
//! that last had room and the unmap searching for it.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use swiotlb::tlb::{GrowConfig, Growth, IoTlb, ManualClock, TlbKind};
use swiotlb::{Attrs, Device, Direction, DmaMask, PhysAddr, PoolConfig};
use swiotlb_host::HeapProvider;

use super::report::Row;
use super::timing::{interleave, Contender, Run, Sampling};
use crate::error::Error;
use crate::rng::seeded;
use rand::RngExt as _;

/// Pool counts measured.
const POOLS: [usize; 3] = [1, 100, 10_000];

/// Slots of 512 bytes, 8 per segment, 64 per pool: 32 KiB pools, so that
/// 10,000 of them stay small (the heap hands out untouched pages lazily).
fn geometry() -> PoolConfig {
    PoolConfig::DEFAULT
        .with_slot_shift(9)
        .with_segment(8)
        .with_nareas(1)
        .with_page_shift(12)
}

const POOL_BYTES: usize = 64 << 9;

/// A growing tlb of heap memory, its clock standing still.
fn heap_tlb(config: GrowConfig) -> Result<IoTlb, Error> {
    IoTlb::growing(TlbKind::Default, Growth::new(HeapProvider::new(), config))
        .map(|t| t.with_clock(Arc::new(ManualClock::new())))
        .map_err(Error::from)
}

/// A tlb of `pools` pools, and the microseconds each of the last
/// [`GROWTHS`] growths took (fewer if there were fewer).
fn tlb(pools: usize) -> Result<(IoTlb, Vec<f64>), Error> {
    let mut config = GrowConfig::new(POOL_BYTES, POOL_BYTES * pools);
    config.grow_by = POOL_BYTES;
    config.pool = geometry();
    let tlb = heap_tlb(config)?;
    let mut us = Vec::new();
    while tlb.pool_count() < pools {
        let timed = pools - tlb.pool_count() <= GROWTHS;
        let t = Instant::now();
        if !tlb.add_pool()? {
            return Err(Error::Bench(format!(
                "lookup: stopped at {} pools",
                tlb.pool_count()
            )));
        }
        if timed {
            us.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok((tlb, us))
}

/// Addresses inside the pools, uniformly over pools, seeded.
fn addresses(starts: &[PhysAddr], seed: u64, n: usize) -> Vec<PhysAddr> {
    let mut rng = seeded(seed);
    (0..n)
        .map(|_| {
            let p = starts[rng.random_range(0..starts.len())];
            p + rng.random_range(0..POOL_BYTES as u64)
        })
        .collect()
}

/// A timed loop over `addrs`, `find` per address.
fn lookups<'a>(
    addrs: &'a [PhysAddr],
    mut find: impl FnMut(PhysAddr) -> Option<usize> + 'a,
) -> Run<'a> {
    Box::new(move |iters| {
        let t = Instant::now();
        let mut k = 0;
        for _ in 0..iters {
            black_box(find(black_box(addrs[k])));
            k += 1;
            if k == addrs.len() {
                k = 0;
            }
        }
        Ok(t.elapsed())
    })
}

/// Growths timed for the `grow` row.
const GROWTHS: usize = 16;

/// The `grow` row: microseconds to add one 4 MiB pool (the provider's
/// allocation, the pool's set-up, the insertion), median of [`GROWTHS`].
/// The heap provider hands out memory untouched; one that zeroed or
/// touched it here would pay a page fault per page on the growth's path.
pub(crate) fn grow_part(rows: &mut Vec<Row>) -> Result<(), Error> {
    let mut config = GrowConfig::new(1 << 20, 1 << 30);
    config.grow_by = 4 << 20;
    let tlb = heap_tlb(config)?;
    let mut us: Vec<f64> = (0..GROWTHS)
        .map(|_| {
            let t = Instant::now();
            let grew = tlb.add_pool()?;
            let e = t.elapsed().as_secs_f64() * 1e6;
            if grew {
                Ok(e)
            } else {
                Err(Error::Bench("grow: the tlb did not grow".into()))
            }
        })
        .collect::<Result<_, Error>>()?;
    us.sort_by(f64::total_cmp);
    rows.push(
        Row::new("grow", "fast", 4 << 20, "none", us[GROWTHS / 2], "us")
            .note(format!("add_pool of 4 MiB, median of {GROWTHS}")),
    );
    Ok(())
}

/// Measures the three rows for each pool count.
pub(crate) fn lookup_part(sampling: Sampling, seed: u64, rows: &mut Vec<Row>) -> Result<(), Error> {
    let dev = Device::new(DmaMask::BITS_64).with_force_bounce();
    for &n in &POOLS {
        let (tlb, mut grew) = tlb(n)?;
        if !grew.is_empty() {
            // What keeping the lookup index costs: it is rebuilt on every
            // growth, so adding a pool costs more as pools accumulate.
            grew.sort_by(f64::total_cmp);
            let median = grew[grew.len() / 2];
            rows.push(
                Row::new("grow", "fast", POOL_BYTES as u64, "none", median, "us")
                    .pools(n as u64)
                    .note(format!(
                        "add_pool of 32 KiB reaching {n} pools, median of the last {}",
                        grew.len()
                    )),
            );
        }
        let starts = tlb.pool_starts();
        let addrs = addresses(&starts, seed ^ n as u64, 4096);
        let walk_starts = starts.clone();
        let tlb_ref = &tlb;
        let dev_ref = &dev;
        let mut spare = Some(vec![0x5au8; 64]);
        let pair: Run<'_> = Box::new(move |iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let buf = spare.take().unwrap_or_else(|| vec![0x5au8; 64]);
                let m = tlb_ref
                    .map_with_attrs(dev_ref, buf, Direction::ToDevice, Attrs::NONE)
                    .map_err(|f| Error::from(f.error))?;
                black_box(m.dma_addr());
                spare = Some(m.unmap());
            }
            Ok(t.elapsed())
        });
        let mut contenders = vec![
            Contender::new(lookups(&addrs, |a| tlb_ref.pool_index_of(a))),
            Contender::new(lookups(&addrs, move |a| {
                walk_starts
                    .iter()
                    .position(|s| a.0 >= s.0 && a.0 - s.0 < POOL_BYTES as u64)
            })),
            Contender::new(pair),
        ];
        let s = interleave(&mut contenders, sampling)?;
        let n64 = n as u64;
        rows.push(
            Row::new("lookup", "fast", 0, "none", s[0].median, "ns")
                .pools(n64)
                .spread(s[0].spread)
                .note(format!("{n} pools, granule index")),
        );
        rows.push(
            Row::new("lookup", "nextfit", 0, "none", s[1].median, "ns")
                .pools(n64)
                .spread(s[1].spread)
                .note(format!("{n} pools, list walk as Linux")),
        );
        rows.push(
            Row::new("map_unmap_pools", "fast", 64, "to", s[2].median, "ns")
                .pools(n64)
                .spread(s[2].spread)
                .note(format!("{n} pools")),
        );
        drop(contenders);
    }
    Ok(())
}
