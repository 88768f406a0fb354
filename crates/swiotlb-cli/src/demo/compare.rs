//! `demo --compare`: the cost of confinement. The same I/O, one request
//! size at a time, once bounced through the restricted tlb and once
//! unbounced: the driver's buffers then live in a second memfd that the
//! device is given too, and `share` hands the device the buffers' own
//! addresses. The device reaches that memfd and nothing else of the
//! driver's (a [`Window`] translation), so what is not in it (the 16-byte
//! request headers, the status bytes and indirect descriptor tables the
//! driver keeps on its heap) still bounces, through a small default tlb,
//! and the rings come from pages of a third memfd. Both runs are in this
//! process, against a fresh device each.

use std::cell::RefCell;
use std::io::Write;
use std::sync::Arc;

use serde::Serialize;
use swiotlb::translate::{Limits, Translate};
use swiotlb::{Device, DmaMask, GrowConfig, Growth, IoTlb, Platform, TlbKind};
use swiotlb::{DmaAddr, PhysAddr};
use swiotlb_host::{MemfdProvider, SharedBuffer, SharedMemory};
use swiotlb_virtio::{HalOptions, PageSource};

use super::workload::{plan, plan_rng};
use super::{progress, BouncedHal, Buffers, DeviceRun, HeapBuffers};
use crate::error::Error;
use crate::units::human;

swiotlb_virtio::hal!(struct DirectHal<swiotlb::Fast, Window>);

/// The default tlb of the unbounced run: headers, status bytes and
/// indirect tables only.
const SMALL_POOL: usize = 256 << 10;

/// Identity addresses, and a device that reaches the driver's memory only
/// inside `[start, end)` (the memfd of its buffers) and in the regions of
/// `pages` (the memfds of its rings and of the small tlb's pool).
#[derive(Clone, Debug)]
pub(crate) struct Window {
    start: u64,
    end: u64,
    pages: Arc<MemfdProvider>,
}

impl Translate for Window {
    fn phys_to_dma(&self, phys: PhysAddr) -> DmaAddr {
        DmaAddr(phys.0)
    }

    fn dma_to_phys(&self, dma: DmaAddr) -> PhysAddr {
        PhysAddr(dma.0)
    }

    /// The buffers' memfd first: the data of every request is there, so
    /// the provider's map is looked up only for what bounces anyway.
    fn dma_capable(&self, _: &Limits, _: PhysAddr, dma: DmaAddr, size: usize) -> bool {
        (dma.0 >= self.start && dma.0.saturating_add(size as u64) <= self.end)
            || self.pages.holds(dma.0, size as u64)
    }
}

/// Bytes written then read per request size, mode and round: enough
/// requests of the largest size to average over, small enough to keep
/// the comparison to seconds.
const PER_SIZE: u64 = 64 << 20;

/// Rounds per size, the two modes alternating; each mode's best round
/// counts, so a stall of the machine in one round does not decide the
/// ratio.
const ROUNDS: usize = 5;

/// One request size, bounced and not.
#[derive(Serialize, Debug, Clone, Copy)]
pub(crate) struct Row {
    /// Bytes per request.
    request_size: usize,
    /// Writes and reads together, MB/s, through the bounce pool.
    bounced_mb_per_s: f64,
    /// The same I/O with the device reaching the driver's buffers.
    unbounced_mb_per_s: f64,
    /// bounced / unbounced.
    ratio: f64,
}

/// The sizes compared: 4 KiB to the largest mapping, by powers of four,
/// and the largest itself.
fn sizes(largest: usize) -> Vec<usize> {
    let mut v = Vec::new();
    let mut s = 4096;
    while s < largest {
        v.push(s);
        s *= 4;
    }
    v.push(largest / 512 * 512);
    v
}

/// Driver buffers carved out of one shared memory, one per request in
/// flight, each as large as the largest request.
struct SharedBuffers {
    free: RefCell<Vec<SharedBuffer>>,
}

impl Buffers for SharedBuffers {
    type B = SharedBuffer;
    fn take(&self, len: usize) -> SharedBuffer {
        let mut b = self
            .free
            .borrow_mut()
            .pop()
            .expect("no more requests in flight than buffers");
        b.set_len(len);
        b
    }
    fn give(&self, b: SharedBuffer) {
        self.free.borrow_mut().push(b);
    }
}

pub(crate) fn run(
    runner: &DeviceRun<'_>,
    provider: &MemfdProvider,
    largest: usize,
    quiet: bool,
) -> Result<Vec<Row>, Error> {
    // The unbounced platform: a device that reaches the buffers' memfd,
    // a small default tlb for the rest, coherent pages (the rings) from
    // memfds the device is told of, like the tlb's pool.
    let depth = runner.depth + 1;
    let (buffers, buffers_region) = SharedMemory::new("swiotlb-demo-buffers", depth * largest)
        .map_err(|e| Error::Demo(format!("the unbounced buffers' memfd: {e}")))?
        .into_buffers(largest);
    let pages = Arc::new(MemfdProvider::new("swiotlb-demo-direct"));
    let small = IoTlb::growing(
        TlbKind::Default,
        Growth::new(pages.clone(), GrowConfig::new(SMALL_POOL, SMALL_POOL)),
    )
    .map_err(|e| Error::Demo(format!("the unbounced run's default pool: {e}")))?;
    let platform: &'static Platform = Box::leak(Box::new(Platform::new().with_default(small)));
    let window = Window {
        start: buffers_region.dma,
        end: buffers_region.dma + buffers_region.len,
        pages: pages.clone(),
    };
    DirectHal::bind(
        platform,
        Device::new(DmaMask::BITS_64).with_translate(window),
        HalOptions::new()
            .with_name("virtio-blk (unbounced)")
            .with_pages(PageSource::new(pages.clone())),
    )
    .map_err(|e| Error::Demo(e.to_string()))?;
    let shared = SharedBuffers {
        free: RefCell::new(buffers),
    };

    let sizes = sizes(largest);
    let per = PER_SIZE.min(runner.size);
    let bar = progress::Bar::new(4 * per * (ROUNDS * sizes.len()) as u64, quiet);
    let mut rows = Vec::new();
    for &size in &sizes {
        let writes = plan(per, &[size], &mut plan_rng(runner.seed, 3));
        let reads = plan(per, &[size], &mut plan_rng(runner.seed, 4));
        let (mut bounced, mut unbounced) = (0f64, 0f64);
        let mb = |d: &super::Done| 2.0 * per as f64 / (d.write + d.read).as_secs_f64() / 1e6;
        let heap = HeapBuffers::default();
        for _ in 0..ROUNDS {
            let b = runner.run::<BouncedHal, _>(&[], provider, &writes, &reads, &heap, &bar)?;
            bounced = bounced.max(mb(&b));
            let u = runner.run::<DirectHal, _>(
                std::slice::from_ref(&buffers_region),
                &pages,
                &writes,
                &reads,
                &shared,
                &bar,
            )?;
            unbounced = unbounced.max(mb(&u));
        }
        rows.push(Row {
            request_size: size,
            bounced_mb_per_s: bounced,
            unbounced_mb_per_s: unbounced,
            ratio: bounced / unbounced,
        });
    }
    bar.finish();
    Ok(rows)
}

pub(crate) fn print(out: &mut impl Write, rows: &[Row]) -> std::io::Result<()> {
    writeln!(
        out,
        "the cost of confinement (writes and reads together, MB/s):"
    )?;
    writeln!(
        out,
        "  {:>9}  {:>9}  {:>10}  {:>6}",
        "request", "bounced", "unbounced", "ratio"
    )?;
    for r in rows {
        writeln!(
            out,
            "  {:>9}  {:>9.1}  {:>10.1}  {:>6.2}",
            human(r.request_size as u64),
            r.bounced_mb_per_s,
            r.unbounced_mb_per_s,
            r.ratio
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_compared_sizes_run_from_4k_to_the_largest() {
        assert_eq!(super::sizes(256 << 10), vec![4096, 16384, 65536, 262144]);
        assert_eq!(super::sizes(4096), vec![4096]);
    }
}
