//! The one audited copy between CPU buffers and bounce slots.
//!
//! Every byte that moves between an original buffer and a bounce slot moves
//! here. Bounce slots are memory a device can read and write at any time
//! (a malicious host in a confidential VM, a buggy device anywhere), so the
//! reasoning is written once:
//!
//! - **No double fetch.** The core never reads bounce memory to make a
//!   decision: all bookkeeping (which slots are taken, where a mapping's
//!   original is, how long it is) lives in pool metadata the device cannot
//!   reach. Bounce bytes are only ever copied, once, into the original.
//!   Whatever a device does to them, it can change only the bytes it was
//!   allowed to write.
//! - **Bounds come from metadata.** Every copy's length has been checked
//!   against the mapping's recorded length before this routine runs, so a
//!   copy never leaves the mapping's slots or the original buffer.
//! - **A plain copy.** The copy is `ptr::copy_nonoverlapping` on bytes,
//!   Linux's `memcpy`. The compiler cannot see the device, and a byte copy
//!   into a buffer the CPU owns carries no value the compiler could
//!   re-read. Volatile copies go byte or word at a time and cannot use the
//!   vectorised `memcpy` the benchmark compares against (`swiotlb bench`:
//!   64 KiB and 256 KiB bounces within 1.06x of a hot memcpy), for no gain
//!   in what the device can do.

/// Copies `len` bytes from `src` to `dst`.
///
/// # Safety
/// - `src` is valid for reads of `len` bytes and `dst` for writes of `len`
///   bytes;
/// - the two ranges do not overlap (one is always in a bounce pool, the
///   other never is);
/// - the CPU side of the copy is not accessed through a Rust reference for
///   the duration (the device side may be accessed by the device).
#[inline]
pub(crate) unsafe fn bounce_copy(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY:
    // - validity for reads and writes of `len` bytes: the caller's first
    //   obligation;
    // - non-overlap: the caller's second obligation;
    // - no aliasing reference to the CPU side: the caller's third.
    unsafe { core::ptr::copy_nonoverlapping(src, dst, len) }
}
