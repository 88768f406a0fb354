//! Pool metadata memory: one block per pool, carved front to back into the
//! arrays the pool and its policy keep.
//!
//! A heap pool ([`Pool::new`](super::Pool::new)) allocates its block
//! zeroed; a heapless pool
//! ([`Pool::new_with_metadata`](super::Pool::new_with_metadata)) is lent
//! one for good by its caller, a `static` in firmware. Either way every
//! array is a [`MetaSlice`]: a pointer and a length that dereference to a
//! slice exactly as a boxed slice does, so the map path does not know, and
//! does not test, who owns the memory. Only the end differs: the pool
//! drops its arrays in place, then frees a heap block.
//!
//! How much a block must hold is stated in `const fn`s (here and in
//! [`Pool::metadata_len`](super::Pool::metadata_len)), so that a heapless
//! pool's metadata can be a `static` sized at compile time. The carving
//! checks every array against the block's end by itself, so a statement
//! that disagreed with the carving would make a pool fail to build, never
//! reach past its block.

use core::marker::PhantomData;
use core::mem::{align_of, size_of};
use core::ptr::NonNull;

use super::policy::AreaGeom;

/// An array in a pool's metadata block: what the pool and its policy keep
/// their per-slot and per-area state in.
///
/// It dereferences to a slice, as a `Box<[T]>` does, and drops its values
/// in place when dropped; it never frees memory. Only a pool makes one,
/// when it carves its block (a policy receives its arrays from
/// [`AreaMemory::take`]), and a pool frees a block it owns only after
/// every array in it has been dropped.
///
/// # Invariants
/// `ptr` is aligned for `T` and valid for reads and writes of `len`
/// initialised values of `T` until the `MetaSlice` is dropped, and nothing
/// but this `MetaSlice` reaches them meanwhile.
pub struct MetaSlice<T> {
    ptr: NonNull<T>,
    len: usize,
    /// Owns its values: dropping it drops them.
    _owns: PhantomData<T>,
}

// SAFETY: a `MetaSlice` owns its values exclusively (type invariant), as a
// `Box<[T]>` does, so sending it sends only `T`s.
unsafe impl<T: Send> Send for MetaSlice<T> {}
// SAFETY: `&MetaSlice` gives only `&[T]`, as `&Box<[T]>` does.
unsafe impl<T: Sync> Sync for MetaSlice<T> {}

impl<T> MetaSlice<T> {
    /// An array over `len` values at `ptr`.
    ///
    /// # Safety
    /// `ptr` is aligned for `T` and valid for reads and writes of `len`
    /// initialised values of `T` for as long as the result lives, and
    /// nothing else reaches them meanwhile.
    unsafe fn from_raw(ptr: NonNull<T>, len: usize) -> Self {
        // INVARIANT: the caller's obligations, word for word.
        Self {
            ptr,
            len,
            _owns: PhantomData,
        }
    }
}

impl<T> core::ops::Deref for MetaSlice<T> {
    type Target = [T];

    #[inline(always)]
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` is aligned and valid for `len` initialised values,
        // which nothing else reaches (type invariant); the shared borrow of
        // `self` keeps them from being written through `deref_mut`.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> core::ops::DerefMut for MetaSlice<T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: `ptr` is aligned and valid for reads and writes of `len`
        // initialised values, which nothing else reaches (type invariant);
        // the exclusive borrow of `self` makes this the only access.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: core::fmt::Debug> core::fmt::Debug for MetaSlice<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        (**self).fmt(f)
    }
}

impl<T> Drop for MetaSlice<T> {
    fn drop(&mut self) {
        let values = core::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len);
        // SAFETY: the values are initialised, aligned and reached by nothing
        // else (type invariant), and are dropped once: here, as the
        // `MetaSlice` that owns them goes.
        unsafe { core::ptr::drop_in_place(values) }
    }
}

mod sealed {
    /// Types whose all-zero bytes are a valid value.
    ///
    /// # Implementation safety
    /// All-zero bytes must be a valid, initialised value of the type.
    pub unsafe trait ZeroValid: Sized {}
}

pub(crate) use sealed::ZeroValid;

// SAFETY: every bit pattern is a valid `u16`.
unsafe impl ZeroValid for u16 {}
// SAFETY: every bit pattern is a valid `u32`.
unsafe impl ZeroValid for u32 {}
// SAFETY: every bit pattern is a valid `u64`.
unsafe impl ZeroValid for u64 {}
// SAFETY: `AtomicU64` has the in-memory representation of `u64`, for which
// zero is valid.
#[cfg(not(swiotlb_loom))]
unsafe impl ZeroValid for core::sync::atomic::AtomicU64 {}
// SAFETY: `AtomicPtr<u8>` has the in-memory representation of `*mut u8`,
// for which all-zero is the null pointer, a valid value.
#[cfg(not(swiotlb_loom))]
unsafe impl ZeroValid for core::sync::atomic::AtomicPtr<u8> {}

/// A word a policy keeps per-area metadata in: `u16`, `u32` or `u64`.
/// Sealed: the pool hands these out zeroed, so all-zero must be a value.
pub trait MetaWord: ZeroValid + Copy + Send + Sync + 'static {
    /// Bits in the word.
    const BITS: u32;
}

impl MetaWord for u16 {
    const BITS: u32 = u16::BITS;
}

impl MetaWord for u32 {
    const BITS: u32 = u32::BITS;
}

impl MetaWord for u64 {
    const BITS: u32 = u64::BITS;
}

/// How many words of a [`MetaArray`] an area needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaCount {
    /// One word per slot of the area.
    Slots,
    /// One bit per slot of the area, in whole words.
    SlotBits,
    /// One word per segment the area touches (segment lines counted from
    /// the pool's first slot, so an area that does not start on one
    /// touches a segment more).
    Segments,
    /// One bit per segment the area touches, in whole words.
    SegmentBits,
}

/// One array of a policy's per-area metadata, as the policy declares it in
/// [`Policy::METADATA`](super::Policy::METADATA): words of one type, as
/// many as a [`MetaCount`] of the area says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaArray {
    size: usize,
    align: usize,
    bits: u32,
    count: MetaCount,
}

impl MetaArray {
    /// An array of `count` words of type `W`.
    pub const fn of<W: MetaWord>(count: MetaCount) -> Self {
        Self {
            size: size_of::<W>(),
            align: align_of::<W>(),
            bits: W::BITS,
            count,
        }
    }

    /// Words the array holds for an area of geometry `geom`.
    pub const fn words(&self, geom: &AreaGeom) -> usize {
        let n = match self.count {
            MetaCount::Slots | MetaCount::SlotBits => geom.nslabs,
            MetaCount::Segments | MetaCount::SegmentBits => geom.segments(),
        };
        match self.count {
            MetaCount::Slots | MetaCount::Segments => n as usize,
            MetaCount::SlotBits | MetaCount::SegmentBits => n.div_ceil(self.bits) as usize,
        }
    }

    /// Bytes the array holds for an area of geometry `geom` (alignment
    /// padding before it not included).
    pub const fn bytes(&self, geom: &AreaGeom) -> usize {
        self.words(geom).saturating_mul(self.size)
    }

    /// Whether the array is of words of type `W`.
    const fn is_of<W: MetaWord>(&self) -> bool {
        self.size == size_of::<W>() && self.align == align_of::<W>() && self.bits == W::BITS
    }
}

/// The end of an array of `n` values of `size` bytes, aligned to `align` (a
/// power of two), placed at or after byte `at` of a block whose start is
/// aligned to `align`; `None` on overflow. The one placement rule of the
/// carving and of every metadata size.
pub(crate) const fn place(at: usize, align: usize, n: usize, size: usize) -> Option<usize> {
    let start = match at.checked_add(align - 1) {
        Some(end) => end & !(align - 1),
        None => return None,
    };
    match n.checked_mul(size) {
        Some(bytes) => start.checked_add(bytes),
        None => None,
    }
}

/// [`place`] for an array of `n` values of `T`, after `at` (`None`
/// passes through).
pub(crate) const fn after<T>(at: Option<usize>, n: usize) -> Option<usize> {
    match at {
        Some(at) => place(at, align_of::<T>(), n, size_of::<T>()),
        None => None,
    }
}

/// [`place`] for the arrays a policy declares for an area of geometry
/// `geom`, in order, after `at`.
pub(crate) const fn after_declared(
    at: Option<usize>,
    arrays: &[MetaArray],
    geom: &AreaGeom,
) -> Option<usize> {
    let mut at = at;
    let mut i = 0;
    while i < arrays.len() {
        at = match at {
            Some(a) => place(a, arrays[i].align, arrays[i].words(geom), arrays[i].size),
            None => None,
        };
        i += 1;
    }
    at
}

/// A metadata block being carved into arrays, front to back.
///
/// # Invariants
/// - `base` is valid for reads and writes of `len` bytes for as long as
///   any array carved from it lives, and nothing but those arrays reaches
///   them;
/// - the bytes from `used` on have not been handed out;
/// - if `zeroed`, every byte from `used` on is zero.
pub(crate) struct Carver {
    base: NonNull<u8>,
    len: usize,
    used: usize,
    zeroed: bool,
}

impl Carver {
    /// A carver over `len` bytes at `base`; `zeroed` says they are all
    /// zero already (a fresh zeroed allocation), so that zeroed arrays
    /// need not be written, and a large pool's metadata costs nothing
    /// until it is used.
    ///
    /// # Safety
    /// - `base` is valid for reads and writes of `len` bytes for as long
    ///   as any array carved from it lives, and nothing else reaches them
    ///   meanwhile;
    /// - if `zeroed`, every one of those bytes is zero.
    pub(crate) unsafe fn new(base: NonNull<u8>, len: usize, zeroed: bool) -> Self {
        // INVARIANT: the caller's obligations; nothing is handed out yet.
        Self {
            base,
            len,
            used: 0,
            zeroed,
        }
    }

    /// Bytes carved so far, alignment padding included.
    pub(crate) fn used(&self) -> usize {
        self.used
    }

    /// Room for `n` values of `T`, aligned for `T`, none of it handed out
    /// before; `None` if the block has not that much left.
    fn reserve<T>(&mut self, n: usize) -> Option<NonNull<T>> {
        // Aligned by address, not by offset: right whatever the base's
        // alignment (the layout the sizes are computed for aligns the base
        // first, and then the two agree).
        let addr = self.base.as_ptr().addr().checked_add(self.used)?;
        let pad = addr.wrapping_neg() & (align_of::<T>() - 1);
        let end = place(self.used.checked_add(pad)?, 1, n, size_of::<T>())?;
        if end > self.len {
            return None;
        }
        let start = self.used + pad;
        // INVARIANT: `[start, end)` is handed out now and never again.
        self.used = end;
        // SAFETY: `start <= end <= len`, so the result is inside the block
        // (or one past its end for an empty array), which `base` is valid
        // for (type invariant).
        let p = unsafe { self.base.as_ptr().add(start) };
        NonNull::new(p.cast::<T>())
    }

    /// `n` values of `T`, all zero.
    pub(crate) fn zeroed<T: ZeroValid>(&mut self, n: usize) -> Option<MetaSlice<T>> {
        let p = self.reserve::<T>(n)?;
        if !self.zeroed {
            // SAFETY: `p` is aligned for `T` and its `n` values lie inside
            // the block, valid for writes and handed out to no one else
            // (`reserve`).
            unsafe { core::ptr::write_bytes(p.as_ptr(), 0, n) };
        }
        // SAFETY:
        // - `p` is aligned for `T` and valid for reads and writes of `n`
        //   values for as long as arrays of the block live (the carver's
        //   invariant), and nothing else reaches them (`reserve` hands
        //   each byte out once);
        // - they are initialised: all-zero bytes, written just above or
        //   zero already (`zeroed`), are a valid `T` (`ZeroValid`).
        Some(unsafe { MetaSlice::from_raw(p, n) })
    }

    /// Room for `n` values of `T`, to be written one by one.
    pub(crate) fn filling<T>(&mut self, n: usize) -> Option<Filling<T>> {
        let ptr = self.reserve::<T>(n)?;
        // INVARIANT: fresh room for `n` values, none written yet.
        Some(Filling {
            ptr,
            cap: n,
            len: 0,
        })
    }

    /// `n` values of `T`, the `i`th made by `f(i)`: for types whose
    /// all-zero bytes are no value (loom's atomics).
    #[cfg(any(swiotlb_loom, test))]
    pub(crate) fn filled<T>(
        &mut self,
        n: usize,
        mut f: impl FnMut(usize) -> T,
    ) -> Option<MetaSlice<T>> {
        let mut fill = self.filling(n)?;
        for i in 0..n {
            fill.push(f(i)).ok()?;
        }
        fill.finish()
    }
}

/// Room for an array being written value by value; dropping it before it
/// is full drops the values written so far.
///
/// # Invariants
/// `ptr` is aligned for `T` and valid for writes of `cap` values, reached
/// by nothing else, for as long as arrays of its block live; the first
/// `len <= cap` of them are initialised.
pub(crate) struct Filling<T> {
    ptr: NonNull<T>,
    cap: usize,
    len: usize,
}

impl<T> Filling<T> {
    /// Writes the next value; a value past the room comes back.
    pub(crate) fn push(&mut self, value: T) -> Result<(), T> {
        if self.len == self.cap {
            return Err(value);
        }
        // SAFETY: `len < cap`, so the slot is inside the room.
        let slot = unsafe { self.ptr.as_ptr().add(self.len) };
        // SAFETY: the slot is aligned, valid for writes and not yet
        // initialised (type invariant), so nothing is overwritten that
        // needed dropping.
        unsafe { slot.write(value) };
        // INVARIANT: one more value is initialised.
        self.len += 1;
        Ok(())
    }

    /// The array, once every value is written; `None` (dropping the values
    /// written) otherwise.
    pub(crate) fn finish(self) -> Option<MetaSlice<T>> {
        if self.len != self.cap {
            return None;
        }
        let this = core::mem::ManuallyDrop::new(self);
        // SAFETY: `ptr` is aligned and valid for reads and writes of `cap`
        // values, all initialised now, and reached by nothing else for as
        // long as arrays of the block live (type invariant); `this` is
        // never dropped, so the values have one owner, the result.
        Some(unsafe { MetaSlice::from_raw(this.ptr, this.cap) })
    }
}

impl<T> Drop for Filling<T> {
    fn drop(&mut self) {
        let written = core::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len);
        // SAFETY: the first `len` values are initialised (type invariant),
        // owned by nothing else, and dropped once: here.
        unsafe { core::ptr::drop_in_place(written) }
    }
}

/// The metadata memory of one area, as [`Policy::new_area`] receives it:
/// the arrays the policy declared in
/// [`Policy::METADATA`](super::Policy::METADATA), in that order.
///
/// [`Policy::new_area`]: super::Policy::new_area
pub struct AreaMemory<'a> {
    carver: &'a mut Carver,
    arrays: &'static [MetaArray],
    next: usize,
    geom: AreaGeom,
}

impl<'a> AreaMemory<'a> {
    /// The memory of the area of geometry `geom`, whose policy declares
    /// `arrays`.
    pub(crate) fn new(
        carver: &'a mut Carver,
        arrays: &'static [MetaArray],
        geom: AreaGeom,
    ) -> Self {
        Self {
            carver,
            arrays,
            next: 0,
            geom,
        }
    }

    /// The next declared array, zeroed, with as many words as the
    /// declaration gives the area. `None` if every declared array has been
    /// taken or the next one is not of words of type `W`: a policy that
    /// takes what it did not declare gets nothing (and its pool is not
    /// built).
    pub fn take<W: MetaWord>(&mut self) -> Option<MetaSlice<W>> {
        let array = *self.arrays.get(self.next)?;
        if !array.is_of::<W>() {
            return None;
        }
        self.next += 1;
        self.carver.zeroed(array.words(&self.geom))
    }
}

#[cfg(test)]
pub(crate) use tests::TestArea;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Policy;

    /// A policy's state for one area, over metadata of its own on the
    /// heap, for tests that drive a policy without a pool.
    pub(crate) struct TestArea<P: Policy> {
        area: P::Area,
        /// The block the area's arrays live in; declared after `area`, so
        /// dropped after it.
        _block: alloc::vec::Vec<u64>,
    }

    impl<P: Policy> TestArea<P> {
        /// An empty area of geometry `geom`.
        pub(crate) fn new(geom: &AreaGeom) -> Self {
            let bytes = after_declared(Some(0), P::METADATA, geom).unwrap();
            let mut block = alloc::vec![0u64; bytes.div_ceil(8)];
            let base = NonNull::new(block.as_mut_ptr().cast::<u8>()).unwrap();
            // SAFETY: the vector's buffer is valid for its `8 * len` bytes,
            // zeroed, reached only through the arrays carved here, and
            // freed only when `_block` drops, after `area` (field order).
            let mut carver = unsafe { Carver::new(base, block.len() * 8, true) };
            let mut mem = AreaMemory::new(&mut carver, P::METADATA, *geom);
            let area = P::new_area(geom, &mut mem).expect("the area's declared arrays");
            TestArea {
                area,
                _block: block,
            }
        }
    }

    impl<P: Policy> core::ops::Deref for TestArea<P> {
        type Target = P::Area;
        fn deref(&self) -> &P::Area {
            &self.area
        }
    }

    impl<P: Policy> core::ops::DerefMut for TestArea<P> {
        fn deref_mut(&mut self) -> &mut P::Area {
            &mut self.area
        }
    }

    #[test]
    fn place_aligns_and_refuses_overflow() {
        assert_eq!(place(0, 8, 3, 8), Some(24));
        assert_eq!(place(1, 8, 3, 8), Some(32));
        assert_eq!(place(9, 2, 1, 2), Some(12));
        assert_eq!(place(5, 1, 0, 4), Some(5));
        assert_eq!(place(usize::MAX - 3, 8, 0, 8), None);
        assert_eq!(place(0, 8, usize::MAX, 8), None);
        assert_eq!(place(8, 8, usize::MAX / 8, 8), None);
    }

    #[test]
    fn array_words_follow_the_count() {
        let geom = AreaGeom {
            first: 100,
            nslabs: 200,
            segment: 64,
            slot_shift: 11,
        };
        // Slots 100..300 touch segments 1 to 4.
        assert_eq!(geom.segments(), 4);
        assert_eq!(MetaArray::of::<u32>(MetaCount::Slots).words(&geom), 200);
        assert_eq!(MetaArray::of::<u64>(MetaCount::SlotBits).words(&geom), 4);
        assert_eq!(MetaArray::of::<u16>(MetaCount::SlotBits).words(&geom), 13);
        assert_eq!(MetaArray::of::<u16>(MetaCount::Segments).words(&geom), 4);
        assert_eq!(MetaArray::of::<u64>(MetaCount::SegmentBits).words(&geom), 1);
        assert_eq!(MetaArray::of::<u16>(MetaCount::Segments).bytes(&geom), 8);
    }

    /// The carving places arrays where `place` says and stops at the end
    /// of the block; a filling dropped half written drops what it wrote.
    #[test]
    fn carving_stays_inside_the_block() {
        let mut block = [!0u64; 8];
        let base = NonNull::new(block.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `block` outlives the carver and every array, and is
        // reached only through them until they are gone.
        let mut carver = unsafe { Carver::new(base, 64, false) };
        let a = carver.zeroed::<u16>(3).unwrap();
        assert_eq!(carver.used(), 6);
        let b = carver.zeroed::<u64>(2).unwrap();
        assert_eq!(carver.used(), place(6, 8, 2, 8).unwrap());
        assert_eq!((a.len(), b.len()), (3, 2));
        assert!(a.iter().all(|&x| x == 0) && b.iter().all(|&x| x == 0));
        assert!(carver.zeroed::<u64>(6).is_none(), "past the end");
        let c = carver.zeroed::<u64>(5).unwrap();
        assert_eq!(carver.used(), 64);
        assert!(carver.zeroed::<u16>(1).is_none());
        assert!(carver.filling::<u8>(1).is_none());
        assert!(carver.zeroed::<u32>(0).is_some(), "an empty array fits");
        drop((a, b, c));

        let dropped = core::cell::Cell::new(0);
        struct Counted<'a>(&'a core::cell::Cell<u32>);
        impl Drop for Counted<'_> {
            fn drop(&mut self) {
                self.0.set(self.0.get() + 1);
            }
        }
        // SAFETY: `block` outlives this carver and its arrays, the arrays
        // carved from it before are dropped, and nothing else reaches it.
        let mut carver = unsafe { Carver::new(base, 64, false) };
        let mut fill = carver.filling::<Counted>(4).unwrap();
        for _ in 0..2 {
            assert!(fill.push(Counted(&dropped)).is_ok());
        }
        assert!(fill.finish().is_none());
        assert_eq!(dropped.get(), 2);
        let all = carver.filled(3, |_| Counted(&dropped)).unwrap();
        drop(all);
        assert_eq!(dropped.get(), 5);
        // A value past the room comes back, unwritten.
        let mut one = carver.filling::<Counted>(1).unwrap();
        assert!(one.push(Counted(&dropped)).is_ok());
        let extra = one.push(Counted(&dropped));
        assert!(extra.is_err(), "no room for a second value");
        drop(extra);
        assert_eq!(dropped.get(), 6);
        let one = one.finish().unwrap();
        assert_eq!(one.len(), 1);
        drop(one);
        assert_eq!(dropped.get(), 7);
        assert_eq!(carver.used(), 64);
    }

    /// A policy gets the arrays it declared, in order, and nothing else.
    #[test]
    fn area_memory_hands_out_what_was_declared() {
        const DECLARED: &[MetaArray] = &[
            MetaArray::of::<u64>(MetaCount::SlotBits),
            MetaArray::of::<u16>(MetaCount::Segments),
        ];
        let geom = AreaGeom {
            first: 0,
            nslabs: 130,
            segment: 64,
            slot_shift: 11,
        };
        let mut block = [0u64; 16];
        let base = NonNull::new(block.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `block` outlives the carver and every array, and is
        // reached only through them until they are gone.
        let mut carver = unsafe { Carver::new(base, 128, true) };
        let mut mem = AreaMemory::new(&mut carver, DECLARED, geom);
        assert!(mem.take::<u16>().is_none(), "the first array is of u64");
        let bits = mem.take::<u64>().unwrap();
        assert_eq!(bits.len(), 3);
        let segs = mem.take::<u16>().unwrap();
        assert_eq!(segs.len(), 3);
        assert!(mem.take::<u16>().is_none(), "nothing more was declared");
        assert_eq!(
            carver.used(),
            after_declared(Some(0), DECLARED, &geom).unwrap()
        );
    }
}
