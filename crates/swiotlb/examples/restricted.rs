//! A virtio-like device behind a restricted DMA pool, next to an ordinary
//! device on the default pool.
//!
//! The device tree gives the virtio device a `restricted-dma-pool`
//! reserved-memory region (Linux `rmem_swiotlb_device_init`): it may reach
//! that region and nothing else. Its driver allocates a coherent ring there
//! (Linux `swiotlb_alloc` via `dma_direct_alloc`) and every buffer it maps
//! bounces through the region, even though the device's 64-bit mask would
//! reach the buffer. The device then floods its pool until it is full; a
//! second device on the default pool keeps mapping, because a restricted
//! device never falls back to a global pool.
//!
//! Run with `cargo run -p swiotlb --example restricted`.

use std::ptr::NonNull;

use swiotlb::translate::Translate;
use swiotlb::{
    Device, Direction, DmaAddr, DmaMask, Error, IoTlb, PhysAddr, Platform, Pool, PoolConfig,
};

/// Heap buffers appear at their CPU address plus 2^40, where a 64-bit
/// device would reach them directly; pools keep the base they are built at.
#[derive(Clone)]
struct HighHeap;

impl Translate for HighHeap {
    fn phys_to_dma(&self, phys: PhysAddr) -> DmaAddr {
        DmaAddr(phys.0)
    }
    fn dma_to_phys(&self, dma: DmaAddr) -> PhysAddr {
        PhysAddr(dma.0)
    }
    fn virt_to_phys(&self, ptr: *const u8) -> PhysAddr {
        PhysAddr(ptr as usize as u64 + (1 << 40))
    }
}

/// A pool over `len` bytes of leaked heap memory at physical `phys`.
fn pool_at(phys: u64, len: usize) -> Pool {
    let mem: &'static mut [u8] = Box::leak(vec![0u8; len].into_boxed_slice());
    let cpu = NonNull::new(mem.as_mut_ptr()).expect("non-null");
    // SAFETY:
    // - leaked memory is valid for `len` bytes for the rest of the program;
    // - its only reference ends here, so only the pool touches it;
    // - the physical base is ours to define in this simulation.
    unsafe { Pool::new(cpu, PhysAddr(phys), len, PoolConfig::default()) }.expect("pool")
}

fn main() {
    const RING: usize = 12 << 10;
    let platform = Platform::new()
        .with_default(pool_at(0x1000_0000, 4 << 20))
        .with_restricted(IoTlb::restricted(
            "virtio_mmio@a003e00-dma",
            pool_at(0x3000_0000, 256 << 10),
        ));

    let virtio = Device::new(DmaMask::BITS_64)
        .with_translate(HighHeap)
        .with_restricted_tlb("virtio_mmio@a003e00-dma");
    let nic = Device::new(DmaMask::BITS_32).with_translate(HighHeap);

    // The ring: zeroed, 16 KiB aligned (12 KiB rounds up to order 2).
    let ring = platform.alloc_coherent(&virtio, RING).expect("ring");
    // SAFETY: the allocation is live and `RING` bytes long; only this
    // driver touches it on the CPU side.
    let bytes = unsafe { std::slice::from_raw_parts(ring.cpu.as_ptr(), RING) };
    assert!(bytes.iter().all(|&b| b == 0));
    assert_eq!(ring.dma.as_u64() % (16 << 10), 0);
    println!(
        "coherent ring: {RING} bytes at {} (16 KiB aligned)",
        ring.dma
    );

    // A request: bounced through the restricted pool although the
    // device's mask reaches the buffer.
    let req = platform
        .map(&virtio, vec![0x42u8; 1500], Direction::ToDevice)
        .expect("map");
    assert!(req.is_bounced());
    println!("virtio request bounced to {}", req.dma_addr());
    drop(req);

    // Flood the restricted pool.
    let mut held = Vec::new();
    let err = loop {
        match platform.map(&virtio, vec![0u8; 16 << 10], Direction::FromDevice) {
            Ok(m) => held.push(m),
            Err(f) => break f.error,
        }
    };
    assert!(matches!(err, Error::PoolFull { .. }));
    println!("virtio after {} buffers: {err}", held.len());

    // The other device is unaffected.
    let m = platform
        .map(&nic, vec![7u8; 9000], Direction::ToDevice)
        .expect("the default pool still serves");
    println!("nic frame bounced to {} in the default pool", m.dma_addr());
    drop(m);
    drop(held);
    // SAFETY: `bytes` is dead and the device is done: nothing uses the
    // ring any more.
    unsafe { platform.free_coherent(&virtio, ring.dma, RING) }.expect("free ring");

    for (name, stats) in platform.stats() {
        println!("\n[{name}]\n{stats}");
    }
}
