//! A low pool for a 32-bit device, a high pool for a 64-bit device that
//! must still bounce.
//!
//! The machine has a default pool below 4 GiB and a high pool above it (the
//! `swiotlb-hi` of Linux's 64-bit swiotlb RFC, sized here with
//! `swiotlb.high=`). Both devices are forced to bounce, as in a
//! confidential VM where the host may see only the pools: the 32-bit device
//! is served by the low pool, the 64-bit one by the high pool, so a big
//! 64-bit device does not eat the low memory the small one depends on.
//! Statistics are printed per named pool.
//!
//! Run with `cargo run -p swiotlb --example lowhigh`.

use std::ptr::NonNull;

use swiotlb::config::{HighParam, SwiotlbParam};
use swiotlb::{Device, Direction, DmaMask, PhysAddr, Platform, Pool, PoolConfig};

/// A pool over `len` bytes of leaked heap memory at physical `phys`.
fn pool_at(phys: u64, len: usize) -> Pool {
    let mem: &'static mut [u8] = Box::leak(vec![0u8; len].into_boxed_slice());
    let cpu = NonNull::new(mem.as_mut_ptr()).expect("non-null");
    // SAFETY:
    // - leaked memory is valid for `len` bytes for the rest of the program;
    // - its only reference ends here, so only the pool touches it;
    // - the physical base is ours to define in this simulation.
    unsafe { Pool::new(cpu, PhysAddr(phys), len, PoolConfig::with_areas(2)) }.expect("pool")
}

fn main() {
    // swiotlb=2048,2,force swiotlb.high=8192: 4 MiB low, 16 MiB high.
    let low = SwiotlbParam::parse_strict("2048,2,force").expect("swiotlb=");
    let high = HighParam::parse_strict("swiotlb.high=8192").expect("swiotlb.high=");
    let low_bytes = low.resolve(2).bytes as usize;
    let platform = Platform::new()
        .with_default(pool_at(0x1000_0000, low_bytes))
        .with_high(pool_at(0x1_0000_0000, high.bytes() as usize));

    let small = Device::new(DmaMask::BITS_32).with_force_bounce();
    let big = Device::new(DmaMask::BITS_64).with_force_bounce();
    println!(
        "32-bit device -> {}",
        platform.select(&small).expect("low").name()
    );
    println!(
        "64-bit device -> {}",
        platform.select(&big).expect("high").name()
    );

    let mut maps = Vec::new();
    for i in 0..8u8 {
        let m = platform
            .map(&small, vec![i; 4096], Direction::ToDevice)
            .expect("low map");
        assert!(m.dma_addr().as_u64() < 1 << 32);
        maps.push(m);
        let m = platform
            .map(&big, vec![i; 64 << 10], Direction::Bidirectional)
            .expect("high map");
        assert!(m.dma_addr().as_u64() >= 1 << 32);
        maps.push(m);
    }
    for (name, stats) in platform.stats() {
        println!("\n[{name}]\n{stats}");
    }
    drop(maps);
}
