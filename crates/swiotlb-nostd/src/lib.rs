//! A bare-metal user of the swiotlb core, written as firmware or an
//! early-boot kernel would write it: no standard library, no allocator, a
//! bounce pool whose slots and metadata are `static`s sized at compile
//! time ([`Pool::metadata_len`]), and a device that must bounce.
//!
//! `ci/nostd.sh` builds it for a target without `std`
//! (`x86_64-unknown-none`) with the core's default features off, so the
//! heapless pool cannot come to need a heap unnoticed; its test runs it on
//! the host.
#![cfg_attr(not(test), no_std)]
#![deny(
    missing_docs,
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    clippy::multiple_unsafe_ops_per_block
)]

use core::mem::MaybeUninit;
use core::ptr::{addr_of_mut, NonNull};
use core::sync::atomic::{AtomicBool, Ordering};

use swiotlb::{Attrs, Device, Direction, DmaMask, Error, Fast, PhysAddr, Pool, PoolConfig};

/// Bytes of the bounce pool: 256 slots of 2 KiB, two segments.
pub const POOL_LEN: usize = 512 << 10;

/// The pool's geometry: Linux's, in two areas.
pub const CONFIG: PoolConfig = PoolConfig::with_areas(2);

/// Bytes of the pool's metadata, worked out at compile time.
pub const META_LEN: usize = Pool::<Fast>::metadata_len(POOL_LEN, CONFIG);

/// The pool's slots, page aligned as a reserved region is.
#[repr(C, align(4096))]
struct Slots([u8; POOL_LEN]);

static mut SLOTS: Slots = Slots([0; POOL_LEN]);
static mut META: [MaybeUninit<u8>; META_LEN] = [MaybeUninit::uninit(); META_LEN];
/// Set once the statics are handed to the pool.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// The bounce pool over the statics, built on the first call; `None` on
/// every later one. Its physical address is its CPU address, as in
/// identity-mapped firmware.
///
/// # Errors
/// Whatever [`Pool::new_with_metadata`] refuses (nothing, for these
/// statics).
pub fn take_pool() -> Option<Result<Pool<Fast>, Error>> {
    if TAKEN.swap(true, Ordering::AcqRel) {
        return None;
    }
    let vaddr = NonNull::new(addr_of_mut!(SLOTS).cast::<u8>())?;
    let phys = PhysAddr(vaddr.as_ptr().addr() as u64);
    let meta = addr_of_mut!(META);
    // SAFETY: `TAKEN` lets this line run once, and nothing else names
    // `META`, so this is the only reference to it ever made.
    let meta = unsafe { &mut *meta };
    // SAFETY:
    // - `SLOTS` is valid for reads and writes of `POOL_LEN` bytes for ever;
    // - nothing but the pool reaches it: this runs once (`TAKEN`) and
    //   nothing else names `SLOTS`;
    // - identity mapping: its physical address is its CPU address.
    Some(unsafe { Pool::new_with_metadata(vaddr, phys, POOL_LEN, CONFIG, meta) })
}

/// A loopback device behind a bounce buffer: maps `buf` for a device that
/// must bounce (as in a confidential VM), plays the device, which adds one
/// to every byte it was given, in the bounce slots, and unmaps, which
/// copies the answer back into `buf`.
///
/// # Errors
/// The map's or the unmap's: [`Error::PoolFull`] when the pool has no room,
/// [`Error::TooLarge`] for a buffer larger than a segment.
pub fn loopback(pool: &Pool<Fast>, buf: &mut [u8]) -> Result<(), Error> {
    let dev = Device::new(DmaMask::BITS_64).with_force_bounce();
    let len = buf.len();
    let cpu = buf.as_mut_ptr();
    let orig = PhysAddr(cpu.addr() as u64);
    // SAFETY: `buf` is borrowed exclusively for this call and reached only
    // through `cpu` until the unmap below (or not at all, if the map
    // fails); `orig` is its physical address (identity).
    let dma = unsafe { pool.map_raw(&dev, orig, cpu, len, Direction::Bidirectional) }?;
    // The device's side: it reaches the slots by their device address,
    // which under identity is their CPU address.
    let slots = pool
        .vaddr()
        .as_ptr()
        .wrapping_add((dma.as_u64() - pool.start().as_u64()) as usize);
    for i in 0..len {
        let byte = slots.wrapping_add(i);
        // SAFETY: `byte` is one of the mapping's `len` bounce bytes, inside
        // the pool, which belong to the device until the unmap; the CPU
        // holds no reference to them.
        let v = unsafe { byte.read() };
        // SAFETY: the same byte, written by the same device.
        unsafe { byte.write(v.wrapping_add(1)) };
    }
    // SAFETY: the mapping is live and the device is done with it; `buf` is
    // still reached only through `cpu`.
    unsafe { pool.unmap_raw(&dev, dma, len, Direction::Bidirectional, Attrs::NONE) }
}

/// A descriptor ring of `size` bytes shared with a device, zeroed, and
/// given back: a coherent allocation's round trip.
///
/// # Errors
/// As [`Pool::alloc_coherent`].
pub fn ring_round_trip(pool: &Pool<Fast>, size: usize) -> Result<(), Error> {
    let dev = Device::new(DmaMask::BITS_64);
    let ring = pool.alloc_coherent(&dev, size)?;
    // SAFETY: nothing has used the ring.
    unsafe { pool.free_coherent(&dev, ring.dma, ring.size) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_static_pool_bounces_and_recovers() {
        let pool = take_pool().expect("first call").expect("a pool");
        assert!(take_pool().is_none(), "the statics are handed out once");
        assert_eq!(pool.nslabs(), 256);
        assert_eq!(pool.nareas(), 2);
        let mut buf = [0u8; 3000];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = i as u8;
        }
        loopback(&pool, &mut buf).unwrap();
        assert!(buf
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i as u8).wrapping_add(1)));
        assert_eq!(pool.used_slots(), 0);
        ring_round_trip(&pool, 8192).unwrap();
        assert_eq!(pool.used_slots(), 0);
        let mut huge = [0u8; 300 << 10];
        assert!(matches!(
            loopback(&pool, &mut huge),
            Err(Error::TooLarge { .. })
        ));
    }
}
