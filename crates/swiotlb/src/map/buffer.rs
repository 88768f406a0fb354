//! The buffers a safe mapping takes: the [`DmaBuffer`] trait and its
//! implementations, [`RawBuffer`] (a buffer taken apart while a device
//! may use it) and [`MapFailed`] (a failed map, with its buffer back).

#[cfg(feature = "alloc")]
use alloc::vec::Vec;
use core::mem::ManuallyDrop;
use core::ptr::NonNull;

use crate::error::Error;

/// A buffer a device may be given: it can be taken apart into a raw
/// region while the device owns it, and put back together afterwards.
///
/// A mapping never keeps the buffer value itself while a device may use
/// its bytes. Moving a value such as a `Box` or a `&mut` retags the memory
/// it points to (Stacked and Tree Borrows alike), which would invalidate
/// any pointer derived from it before the move; so the safe API takes the
/// buffer apart first ([`DmaBuffer::into_raw_parts`]), derives every access
/// from the pointer that returns, lets the mapping move freely, and puts
/// the buffer back together only once no copy can touch it again
/// ([`DmaBuffer::from_raw_parts`]).
///
/// # Implementation safety
/// An implementor guarantees that:
/// - [`DmaBuffer::into_raw_parts`] returns a pointer valid for reads and
///   writes of the returned length, whose provenance comes from the raw
///   form itself (`Box::into_raw`, `ManuallyDrop` and `as_mut_ptr`, a
///   reference turned into a raw pointer), not from any value that moves
///   afterwards;
/// - the bytes stay valid, and nothing other than the holder of the parts
///   reads or writes them, until [`DmaBuffer::from_raw_parts`] is called
///   with the same pointer, length and rest; moving or dropping nothing
///   else invalidates them;
/// - [`DmaBuffer::Rest`] does not own, borrow or point to the bytes in a
///   way that moving it retags them (a capacity, a handle, `()`);
/// - `from_raw_parts` with the parts `into_raw_parts` returned gives back
///   the buffer, bytes included.
pub unsafe trait DmaBuffer: Sized {
    /// What the buffer needs besides its region to be put back together
    /// (a `Vec`'s capacity; nothing for a box or a slice).
    type Rest;

    /// Takes the buffer apart: the bytes' address and length, and the
    /// rest.
    fn into_raw_parts(self) -> (NonNull<u8>, usize, Self::Rest);

    /// Puts a buffer taken apart by [`DmaBuffer::into_raw_parts`] back
    /// together.
    ///
    /// # Safety
    /// `ptr`, `len` and `rest` are what one call of `into_raw_parts`
    /// returned, each used once, and nothing accesses the bytes any more
    /// through `ptr`.
    unsafe fn from_raw_parts(ptr: NonNull<u8>, len: usize, rest: Self::Rest) -> Self;
}

#[cfg(feature = "alloc")]
// SAFETY:
// - the pointer is taken from the `Vec` behind `ManuallyDrop`, so it is
//   the heap buffer's own pointer, valid for `len` bytes, and no `Vec`
//   value exists any more to move or free it;
// - the rest is the capacity, a number;
// - `Vec::from_raw_parts` with the same pointer, length and capacity gives
//   back the same vector (its documented contract).
unsafe impl DmaBuffer for Vec<u8> {
    type Rest = usize;

    fn into_raw_parts(self) -> (NonNull<u8>, usize, usize) {
        let mut v = core::mem::ManuallyDrop::new(self);
        let ptr = NonNull::new(v.as_mut_ptr()).unwrap_or(NonNull::dangling());
        (ptr, v.len(), v.capacity())
    }

    unsafe fn from_raw_parts(ptr: NonNull<u8>, len: usize, capacity: usize) -> Self {
        // SAFETY: `ptr`, `len` and `capacity` describe a vector taken
        // apart by `into_raw_parts` (the caller's obligation), which is
        // what `Vec::from_raw_parts` requires.
        unsafe { Vec::from_raw_parts(ptr.as_ptr(), len, capacity) }
    }
}

#[cfg(feature = "alloc")]
// SAFETY:
// - `Box::into_raw` gives up the box: the pointer it returns is the only
//   one to the bytes, valid for their length, and no box moves any more;
// - the rest is `()`;
// - `Box::from_raw` of that pointer gives back the same box.
unsafe impl DmaBuffer for alloc::boxed::Box<[u8]> {
    type Rest = ();

    fn into_raw_parts(self) -> (NonNull<u8>, usize, ()) {
        let raw = alloc::boxed::Box::into_raw(self);
        let len = raw.len();
        let ptr = NonNull::new(raw.cast::<u8>()).unwrap_or(NonNull::dangling());
        (ptr, len, ())
    }

    unsafe fn from_raw_parts(ptr: NonNull<u8>, len: usize, (): ()) -> Self {
        let raw = core::ptr::slice_from_raw_parts_mut(ptr.as_ptr(), len);
        // SAFETY: `raw` is the pointer `Box::into_raw` returned (the same
        // address and length; a box of an empty slice holds a dangling
        // pointer, which `from_raw` accepts for a zero-sized value), used
        // once (the caller's obligation).
        unsafe { alloc::boxed::Box::from_raw(raw) }
    }
}

// SAFETY:
// - the `&'static mut` is turned into a raw pointer and not kept, so the
//   raw pointer is the only way to the bytes, valid forever;
// - the rest is `()`;
// - reborrowing the raw pointer gives back an exclusive slice of the same
//   bytes.
unsafe impl DmaBuffer for &'static mut [u8] {
    type Rest = ();

    fn into_raw_parts(self) -> (NonNull<u8>, usize, ()) {
        let len = self.len();
        let raw: *mut [u8] = self;
        let ptr = NonNull::new(raw.cast::<u8>()).unwrap_or(NonNull::dangling());
        (ptr, len, ())
    }

    unsafe fn from_raw_parts(ptr: NonNull<u8>, len: usize, (): ()) -> Self {
        // SAFETY: `ptr` and `len` came from a `&'static mut [u8]` given up
        // by `into_raw_parts`: valid for `len` bytes forever, aligned, and
        // no other reference to them exists (the caller uses the parts
        // once and no longer accesses the bytes through `ptr`).
        unsafe { core::slice::from_raw_parts_mut(ptr.as_ptr(), len) }
    }
}

/// A [`DmaBuffer`] taken apart for as long as a device may use it (see the
/// trait). Dropping it puts the buffer back together and drops it.
///
/// # Invariants
/// `ptr`, `len` and `rest` are the parts of one buffer, and `rest` is
/// taken exactly once (by [`RawBuffer::into_buffer`] or by `Drop`).
pub(crate) struct RawBuffer<B: DmaBuffer> {
    ptr: NonNull<u8>,
    len: usize,
    rest: ManuallyDrop<B::Rest>,
}

impl<B: DmaBuffer> RawBuffer<B> {
    /// Takes `buffer` apart.
    pub(crate) fn new(buffer: B) -> Self {
        let (ptr, len, rest) = buffer.into_raw_parts();
        // INVARIANT: the parts of `buffer`, none taken yet.
        Self {
            ptr,
            len,
            rest: ManuallyDrop::new(rest),
        }
    }

    /// The bytes' address: the one pointer every access derives from.
    #[inline]
    pub(crate) fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// The bytes' length.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Puts the buffer back together. Its owner must have made sure that
    /// no copy touches the bytes any more (the slots are given back, the
    /// queued request is cancelled or completed).
    pub(crate) fn into_buffer(self) -> B {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `rest` is taken once: `this` is never dropped, so `Drop`
        // cannot take it again (type invariant).
        let rest = unsafe { ManuallyDrop::take(&mut this.rest) };
        // SAFETY: the parts of one buffer, each used once (type invariant);
        // the owner no longer accesses the bytes (this function's
        // contract).
        unsafe { B::from_raw_parts(this.ptr, this.len, rest) }
    }
}

impl<B: DmaBuffer> Drop for RawBuffer<B> {
    fn drop(&mut self) {
        // SAFETY: taken once, here; `into_buffer` never reaches this drop.
        let rest = unsafe { ManuallyDrop::take(&mut self.rest) };
        // SAFETY: the parts of one buffer, each used once (type invariant);
        // a `RawBuffer` is dropped only by an owner done with its bytes.
        drop(unsafe { B::from_raw_parts(self.ptr, self.len, rest) });
    }
}

/// A failed safe map: the reason and the buffer, given back.
#[derive(Debug)]
pub struct MapFailed<B> {
    /// Why it failed.
    pub error: Error,
    /// The buffer, untouched by any device.
    pub buffer: B,
}

impl<B: DmaBuffer> MapFailed<B> {
    /// The failure of a map of the taken-apart `buffer`.
    pub(crate) fn new(error: Error, buffer: RawBuffer<B>) -> Self {
        Self {
            error,
            buffer: buffer.into_buffer(),
        }
    }
}
