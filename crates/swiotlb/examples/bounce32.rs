//! A 32-bit device on a machine whose buffers live above 4 GiB.
//!
//! The pool sits in "low" memory (physical 0x1000_0000); every heap buffer
//! is made to appear above 4 GiB by the platform translation, so the
//! device, which drives 32 address lines, reaches only the pool. A
//! simulated device thread reads what the driver sent and writes replies;
//! the driver checks every byte and prints the pool's statistics.
//!
//! Run with `cargo run --release -p swiotlb --example bounce32`.

use std::ptr::NonNull;

use swiotlb::translate::Translate;
use swiotlb::{Device, Direction, DmaAddr, DmaMask, PhysAddr, Pool, PoolConfig};

/// Heap buffers appear 4 GiB above their CPU address; the pool region is
/// given its own low physical base when it is built.
struct HighMemory;

impl Translate for HighMemory {
    fn phys_to_dma(&self, phys: PhysAddr) -> DmaAddr {
        DmaAddr(phys.0)
    }
    fn dma_to_phys(&self, dma: DmaAddr) -> PhysAddr {
        PhysAddr(dma.0)
    }
    fn virt_to_phys(&self, ptr: *const u8) -> PhysAddr {
        PhysAddr(ptr as usize as u64 + (1 << 32))
    }
}

/// A pattern that differs per request and per byte.
fn pattern(req: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ req.wrapping_mul(131)) as u8)
        .collect()
}

fn main() {
    const POOL_BYTES: usize = 4 << 20;
    let mut region = vec![0u8; POOL_BYTES].into_boxed_slice();
    let cpu = NonNull::new(region.as_mut_ptr()).expect("non-null");
    // SAFETY:
    // - `region` is valid for `POOL_BYTES` bytes and outlives `pool` (both
    //   live to the end of `main`, `pool` dropped first);
    // - nothing but the pool touches `region` while the pool lives;
    // - the physical base is ours to define in this simulation.
    let pool: Pool = unsafe {
        Pool::new(
            cpu,
            PhysAddr(0x1000_0000),
            POOL_BYTES,
            PoolConfig::with_areas(2),
        )
    }
    .expect("pool");
    let dev = Device::new(DmaMask::BITS_32).with_translate(HighMemory);

    let sizes = [64usize, 512, 1500, 4096, 9000, 65536, 200_000];
    let mut checked = 0usize;
    for (req, &len) in sizes.iter().cycle().take(70).enumerate() {
        // The driver sends a request ...
        let out = pool
            .map(&dev, pattern(req, len), Direction::ToDevice)
            .expect("map out");
        assert!(out.is_bounced(), "a 32-bit device must bounce high memory");
        assert!(out.dma_addr().as_u64() + len as u64 <= 1 << 32);
        // ... and the reply buffer the device will fill.
        let reply = pool
            .map(&dev, vec![0u8; len], Direction::FromDevice)
            .expect("map in");

        // The device: reads the request through its DMA window, answers
        // with the bytes inverted.
        let device = std::thread::scope(|s| {
            s.spawn(|| {
                let mut seen = vec![0u8; len];
                // SAFETY: plays the device: `device_ptr` is the CPU view of
                // `len` bytes the device may access while mapped.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        out.device_ptr().as_ptr(),
                        seen.as_mut_ptr(),
                        len,
                    );
                    for (i, b) in seen.iter().enumerate() {
                        *reply.device_ptr().as_ptr().add(i) = !b;
                    }
                }
                seen
            })
            .join()
            .expect("device thread")
        });
        assert_eq!(device, pattern(req, len), "device saw the request");
        out.unmap();
        let answer = reply.unmap();
        assert!(answer.iter().zip(pattern(req, len)).all(|(a, p)| *a == !p));
        checked += 2 * len;
    }

    println!("bounced and checked {checked} bytes for a 32-bit device");
    println!(
        "pool: {} slots of {} bytes in {} areas at {}",
        pool.nslabs(),
        pool.slot_size(),
        pool.nareas(),
        pool.start()
    );
    println!("{}", pool.stats());
    drop(pool);
    drop(region);
}
