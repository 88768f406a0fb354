//! `dt_parse`: reading the DMA pools of a large flattened device tree.
//!
//! A blob comes from firmware or a VMM and is read once at boot, but its
//! size is not ours to choose: a reader that is quadratic in the nodes
//! turns a few megabytes into seconds. Three shapes of about 3 MiB each are
//! timed: one `restricted-dma-pool` shared by every device (the shape that
//! stresses binding devices to a pool), as many pools as devices, each
//! device naming its own (the phandle lookup and the pool of each
//! target), and pools alone (the overlap check). Each blob is parsed once and its result checked before
//! anything is timed, so a row never times an error path.

use std::hint::black_box;
use std::time::Instant;

use swiotlb::dt::parse;
use vm_fdt::FdtWriter;

use super::report::Row;
use super::timing::{interleave, Contender, Run, Sampling};
use crate::error::Error;

/// The blob shapes measured, as `(pools, devices)`: each blob is about
/// 3 MiB (see the row's `size`). `--smoke` divides the counts by 100.
const SHAPES: [(usize, usize); 3] = [(1, 37_500), (16_400, 16_400), (29_000, 0)];

/// Bytes of each pool; pools lie side by side from 4 GiB up.
const POOL_BYTES: u64 = 1 << 20;
const POOL_BASE: u64 = 1 << 32;

/// A blob of `pools` restricted pools under `/reserved-memory` and
/// `devices` virtio devices under `/soc`, device `i` naming pool
/// `i % pools` by phandle.
fn blob(pools: usize, devices: usize) -> Result<Vec<u8>, Error> {
    build(pools, devices).map_err(Error::BuildBlob)
}

fn build(pools: usize, devices: usize) -> Result<Vec<u8>, vm_fdt::Error> {
    let mut w = FdtWriter::new()?;
    let root = w.begin_node("")?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    w.property_string("compatible", "swiotlb,bench")?;

    let rmem = w.begin_node("reserved-memory")?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    w.property_null("ranges")?;
    for i in 0..pools {
        let base = POOL_BASE + i as u64 * POOL_BYTES;
        let node = w.begin_node(&format!("restricted@{base:x}"))?;
        w.property_string("compatible", "restricted-dma-pool")?;
        w.property_array_u64("reg", &[base, POOL_BYTES])?;
        w.property_phandle(phandle(i))?;
        w.end_node(node)?;
    }
    w.end_node(rmem)?;

    let soc = w.begin_node("soc")?;
    w.property_string("compatible", "simple-bus")?;
    w.property_u32("#address-cells", 1)?;
    w.property_u32("#size-cells", 1)?;
    w.property_null("ranges")?;
    w.property_null("dma-ranges")?;
    for i in 0..devices {
        let at = 0x1000_0000 + i as u32 * 0x200;
        let node = w.begin_node(&format!("virtio@{at:x}"))?;
        w.property_string("compatible", "virtio,mmio")?;
        w.property_array_u32("reg", &[at, 0x200])?;
        w.property_u32("memory-region", phandle(i % pools.max(1)))?;
        w.end_node(node)?;
    }
    w.end_node(soc)?;
    w.end_node(root)?;
    w.finish()
}

/// `n` things, the noun in the plural unless `n` is one.
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The phandle of pool `i`.
fn phandle(i: usize) -> u32 {
    i as u32 + 1
}

/// Parses `blob` once and checks it holds `pools` pools and `devices`
/// bindings.
fn check(blob: &[u8], pools: usize, devices: usize) -> Result<(), Error> {
    let dt =
        parse(blob).map_err(|e| Error::device_tree("dt: the bench blob does not parse", &e))?;
    let bound: usize = dt.pools.iter().map(|p| p.devices.len()).sum();
    if dt.pools.len() != pools || bound != devices {
        return Err(Error::Bench(format!(
            "dt: the bench blob reads as {} pools and {bound} devices, not {pools} and {devices}",
            dt.pools.len()
        )));
    }
    Ok(())
}

/// One parse per operation.
fn parses(blob: &[u8]) -> Run<'_> {
    Box::new(move |n| {
        let t = Instant::now();
        for _ in 0..n {
            let dt = parse(black_box(blob)).map_err(|e| Error::device_tree("", &e))?;
            black_box(dt);
        }
        Ok(t.elapsed())
    })
}

/// The `dt_parse` rows: milliseconds per [`swiotlb::dt::parse`] of each
/// shape, on one thread.
pub(crate) fn dt_part(sampling: Sampling, smoke: bool, rows: &mut Vec<Row>) -> Result<(), Error> {
    let scale = if smoke { 100 } else { 1 };
    let shapes: Vec<(usize, usize)> = SHAPES
        .iter()
        .map(|&(p, d)| (p.div_ceil(scale), d.div_ceil(scale)))
        .collect();
    let blobs = shapes
        .iter()
        .map(|&(p, d)| {
            let b = blob(p, d)?;
            check(&b, p, d)?;
            Ok(b)
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let mut cs: Vec<Contender<'_>> = blobs.iter().map(|b| Contender::new(parses(b))).collect();
    let res = interleave(&mut cs, sampling)?;
    drop(cs);
    for ((&(p, d), b), s) in shapes.iter().zip(&blobs).zip(res) {
        rows.push(
            Row::new(
                "dt_parse",
                "none",
                b.len() as u64,
                "none",
                s.median / 1e6,
                "ms",
            )
            .pools(p as u64)
            .devices(d as u64)
            .spread(s.spread)
            .note(format!(
                "{}, {}, one thread",
                count(p, "pool"),
                count(d, "device")
            )),
        );
    }
    Ok(())
}
