//! Helpers shared by the integration tests: an original buffer reached only
//! through raw pointers, a byte generator, and the device's side of a pool.
//!
//! The tests play the device themselves: with [`Pool::new_heap`] the
//! device address of a bounce slot is its CPU address, so reading and
//! writing pool memory here is exactly what a device's DMA would do.

use std::ptr::NonNull;

use swiotlb::{Device, DmaMask, Policy, Pool};

/// A device that reaches everything but must always bounce (Linux
/// `swiotlb=force`), with identity translation.
pub fn forced() -> Device {
    Device::new(DmaMask::BITS_64).with_force_bounce()
}

/// `len` pseudo-random bytes from `seed`: a block of [`BLOCK`] bytes from
/// the workspace's seeded generator (`rand`'s xoshiro256++), repeated. The block length is a prime, so a copy that lands
/// at a wrong offset (a slot, a page, a padding off) reads different bytes;
/// repeating keeps large buffers cheap in a debug build.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng: rand::rngs::Xoshiro256PlusPlus = rand::SeedableRng::seed_from_u64(seed);
    let mut block = vec![0; BLOCK.min(len)];
    rand::Rng::fill_bytes(&mut rng, &mut block);
    let mut out = block.repeat(len.div_ceil(BLOCK.max(1)));
    out.truncate(len);
    out
}

/// The period of [`bytes`]: a prime larger than a page.
pub const BLOCK: usize = 4099;

/// An original buffer for the raw API. It is reached only through its raw
/// pointer, never through a long-lived reference, because the pool writes
/// into it on sync and unmap while the test keeps it.
///
/// # Invariants
/// `ptr` is the start of a live `Box<[u8]>` of `len` bytes, owned by this
/// value and freed in `Drop`.
pub struct RawBuf {
    ptr: NonNull<u8>,
    len: usize,
}

impl RawBuf {
    /// A buffer holding a copy of `data`.
    pub fn new(data: &[u8]) -> Self {
        let boxed: Box<[u8]> = data.into();
        let len = boxed.len();
        let raw = Box::into_raw(boxed) as *mut u8;
        // INVARIANT: `raw` comes from `Box::into_raw` of `len` bytes.
        Self {
            ptr: NonNull::new(raw).expect("Box::into_raw is never null"),
            len,
        }
    }

    /// The CPU address of the first byte.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The buffer's bytes, copied out.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0; self.len];
        // SAFETY:
        // - `ptr` is valid for reads of `len` bytes (type invariant) and
        //   `out` for writes of as many;
        // - `out` is a fresh allocation, so the ranges do not overlap;
        // - no other access runs meanwhile: the tests are single threaded
        //   and the pool touches the buffer only inside its own calls.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr(), out.as_mut_ptr(), self.len) };
        out
    }

    /// Writes `data` at byte `off`, as the CPU preparing data for a device.
    ///
    /// # Panics
    /// If the write runs past the buffer.
    pub fn write(&self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.len, "write past the buffer");
        let dst = self.ptr().wrapping_add(off);
        // SAFETY:
        // - `[off, off + data.len())` lies inside the buffer (asserted),
        //   valid for writes (type invariant); `data` is valid for reads;
        // - `data` is a distinct Rust slice, so the ranges do not overlap;
        // - no other access runs meanwhile, as in `to_vec`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
    }
}

impl Drop for RawBuf {
    fn drop(&mut self) {
        let slice = std::ptr::slice_from_raw_parts_mut(self.ptr(), self.len);
        // SAFETY: `slice` is the `Box<[u8]>` given up in `new` (type
        // invariant), rebuilt and freed exactly once, here.
        drop(unsafe { Box::from_raw(slice) });
    }
}

/// The device reading `len` bytes of pool memory at byte offset `off`.
///
/// # Panics
/// If the range runs past the pool.
pub fn device_read<P: Policy>(pool: &Pool<P>, off: usize, len: usize) -> Vec<u8> {
    assert!(off + len <= pool.len(), "device read past the pool");
    let mut out = vec![0; len];
    let src = pool.vaddr().as_ptr().wrapping_add(off);
    // SAFETY:
    // - the range lies inside the pool (asserted), whose memory is valid
    //   for reads for the pool's life (`Pool` invariant); `out` is valid
    //   for writes of `len` bytes;
    // - `out` is a fresh allocation, not pool memory;
    // - this is the device's access: the pool keeps no Rust reference to
    //   slot memory, and no pool call runs meanwhile (single thread).
    unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), len) };
    out
}

/// The device writing `data` into pool memory at byte offset `off`.
///
/// # Panics
/// If the range runs past the pool.
pub fn device_write<P: Policy>(pool: &Pool<P>, off: usize, data: &[u8]) {
    assert!(off + data.len() <= pool.len(), "device write past the pool");
    let dst = pool.vaddr().as_ptr().wrapping_add(off);
    // SAFETY: as in `device_read`, the other way: the range is inside the
    // pool (asserted) and valid for writes, `data` is not pool memory, and
    // nothing else accesses the bytes meanwhile.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
}
