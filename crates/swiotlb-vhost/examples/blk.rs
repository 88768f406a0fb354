//! The unmodified virtio-drivers block driver on a restricted, growing
//! tlb whose pools are memfds, against qemu-storage-daemon: the README's
//! "In a program of your own", run whole. It starts the daemon over a 4 MiB
//! image in a temporary directory, writes a sector through the pool,
//! reads it back and prints what the device was given.
//!
//! `cargo run -p swiotlb-vhost --example blk` (needs qemu-storage-daemon,
//! from qemu-utils). `cargo test` runs it too.

use std::sync::Arc;
use std::time::Duration;

use swiotlb::{Device, DmaMask, GrowConfig, Growth, IoTlb, Platform, TlbKind};
use swiotlb_host::MemfdProvider;
use swiotlb_vhost::blk::{self, BlockOp};
use swiotlb_vhost::device::QemuStorageDaemon;
use swiotlb_vhost::VhostUserTransport;
use swiotlb_virtio::HalOptions;
use virtio_drivers::device::blk::VirtIOBlk;
use virtio_drivers::transport::DeviceType;

swiotlb_virtio::hal!(struct BlkHal);

fn main() {
    for line in run() {
        println!("{line}");
    }
}

/// The program; what it would print.
fn run() -> Vec<String> {
    let mut out = Vec::new();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(4 << 20))
        .expect("the image");
    let daemon = QemuStorageDaemon::start(dir.path(), &image, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));

    // A restricted tlb whose pools are memfds, growing from 1 to 8 MiB.
    let provider = Arc::new(MemfdProvider::new("blk-pool"));
    let growth = Growth::new(provider.clone(), GrowConfig::new(1 << 20, 8 << 20));
    let tlb: IoTlb = IoTlb::growing(TlbKind::Restricted, growth)
        .unwrap()
        .with_name("blk");
    let platform: &'static Platform = Box::leak(Box::new(Platform::new().with_restricted(tlb)));
    let dev = Device::new(DmaMask::BITS_64).with_restricted_tlb("blk");
    BlkHal::bind(platform, dev, HalOptions::new()).unwrap();

    // The device gets the pool's regions, and every pool the tlb adds later.
    let regions = provider.regions();
    let transport = VhostUserTransport::connect(
        daemon.socket(),
        DeviceType::Block,
        16,
        &regions,
        Duration::from_secs(5),
    )
    .unwrap();
    let handle = transport.handle();
    // Held as long as the device: it hears of nothing after.
    let _subscription = provider
        .subscribe_knowing(Arc::new(handle.clone()), &regions)
        .unwrap();
    let mut disk = VirtIOBlk::<BlkHal, _>::new(transport).unwrap();
    out.push(format!("a disk of {} sectors", disk.capacity()));

    // One sector out and back, with a deadline on every wait.
    let mut back = None;
    let ops = [
        BlockOp {
            sector: 8,
            buf: vec![0xa5u8; 512],
            write: true,
        },
        BlockOp {
            sector: 8,
            buf: vec![0u8; 512],
            write: false,
        },
    ];
    blk::run(&mut disk, ops, 1, Duration::from_secs(5), &handle, |op| {
        if !op.write {
            back = Some(op.buf);
        }
    })
    .unwrap();
    assert_eq!(back.as_deref(), Some(&[0xa5u8; 512][..]));
    out.push("sector 8 read back as written, through the pool".into());
    for r in handle.regions() {
        out.push(format!(
            "the device holds {} bytes at device address {:#x}",
            r.len, r.dma
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    /// The program runs against a real qemu-storage-daemon and the device
    /// holds the pool and nothing else.
    #[test]
    fn the_readme_program_moves_a_sector_through_the_pool() {
        let out = super::run();
        assert_eq!(out[0], "a disk of 8192 sectors");
        assert!(out[1].contains("read back as written"));
        assert_eq!(out.len(), 3, "one region, the 1 MiB pool: {out:?}");
        assert!(out[2].starts_with("the device holds 1048576 bytes"));
    }
}
