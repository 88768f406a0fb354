//! The safe level: a [`Mapping`] owns its buffer while a device may use
//! it, made by [`Pool::map`] and given back by [`Mapping::unmap`]; where
//! its bytes are ([`Held`], `BounceRef`) and what it borrows ([`Owner`]).

use core::mem::ManuallyDrop;
use core::ptr::NonNull;

use crate::addr::{DmaAddr, PhysAddr};
use crate::attrs::Attrs;
use crate::copy::bounce_copy;
use crate::device::Device;
use crate::direction::Direction;
use crate::error::{Error, Result};
use crate::pool::{Bounce, Policy, Pool};
#[cfg(feature = "alloc")]
use crate::tlb::IoTlb;
use crate::translate::Translate;

use super::{DmaBuffer, MapFailed, MapOptions, RawBuffer};

/// How long the pool of a bounced mapping lives, which decides how its
/// slots are given back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    not(feature = "alloc"),
    expect(
        dead_code,
        reason = "only a growing tlb (alloc) holds grown or transient pools"
    )
)]
pub(crate) enum Held {
    /// The pool outlives the mapping's borrow: a fixed pool, or the first
    /// pool of a growing tlb.
    Lasting,
    /// A grown pool, which the tlb frees once idle: the slots are given
    /// back under the tlb's guard (`IoTlb::guard_release`).
    Grown,
    /// A transient pool made for this mapping alone: the tlb frees it
    /// after the slots are given back.
    Transient,
}

/// Where a safe mapping's device-side bytes are.
///
/// # Invariants
/// `pool` is valid while the mapping holds the slots `start..start +
/// nslots`: for the mapping's borrow (`Held::Lasting`), or in a growing
/// tlb until they are given back (the tlb frees no pool that holds a live
/// allocation, and no grown pool while a release runs in it).
struct BounceRef<P: Policy> {
    pool: NonNull<Pool<P>>,
    held: Held,
    start: u32,
    nslots: u32,
    /// Byte offset of the mapping's first byte in the pool.
    off: usize,
    phys: PhysAddr,
}

impl<P: Policy> Clone for BounceRef<P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P: Policy> Copy for BounceRef<P> {}

/// What a safe mapping borrows: the pool or the tlb that made it.
#[derive(Debug)]
pub(crate) enum Owner<'p, P: Policy> {
    /// Nothing: a direct mapping of a platform that has no default or
    /// high tlb.
    #[cfg(feature = "alloc")]
    Nothing,
    /// A bare pool ([`Pool::map`]).
    Pool(&'p Pool<P>),
    /// A tlb, which is told of every release (to give back a transient
    /// pool, and to serve its queue) and guards the release of a grown
    /// pool's slots.
    #[cfg(feature = "alloc")]
    Tlb(&'p IoTlb<P>),
}

impl<P: Policy> Clone for Owner<'_, P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P: Policy> Copy for Owner<'_, P> {}

impl<'p, P: Policy> Owner<'p, P> {
    /// Where direct mappings and failures are counted.
    #[inline]
    pub(crate) fn home(self) -> Option<&'p Pool<P>> {
        match self {
            #[cfg(feature = "alloc")]
            Owner::Nothing => None,
            Owner::Pool(pool) => Some(pool),
            #[cfg(feature = "alloc")]
            Owner::Tlb(tlb) => Some(tlb.first_pool()),
        }
    }
}

/// A buffer mapped for a device: it owns the buffer until
/// [`Mapping::unmap`] gives it back.
///
/// It holds the buffer taken apart into a raw pointer and a length (see
/// [`DmaBuffer`]), never a reference or the buffer value, because the
/// device may read and write the memory at any time. The CPU reads and
/// writes through [`Mapping::read`] and [`Mapping::write`], which copy
/// through the audited routine. Dropping a mapping unmaps it without
/// copying back (as `SKIP_CPU_SYNC`) and drops the buffer: drop it only
/// when the device is done with it, as with any unmap.
pub struct Mapping<'p, B: DmaBuffer, P: Policy = crate::pool::Fast> {
    buffer: RawBuffer<B>,
    dma: DmaAddr,
    dir: Direction,
    /// The pool or tlb that made the mapping.
    owner: Owner<'p, P>,
    bounce: Option<BounceRef<P>>,
}

impl<P: Policy> Pool<P> {
    /// Maps a buffer for `dev`, taking ownership of it: directly when the
    /// device reaches it and is not forced to bounce, else through this
    /// pool.
    ///
    /// # Errors
    /// A [`MapFailed`] with the reason and the buffer.
    #[inline]
    pub fn map<B: DmaBuffer, T: Translate>(
        &self,
        dev: &Device<T>,
        buffer: B,
        dir: Direction,
    ) -> core::result::Result<Mapping<'_, B, P>, MapFailed<B>> {
        self.map_with_attrs(dev, buffer, dir, Attrs::NONE)
    }

    /// [`Pool::map`] with attributes.
    ///
    /// # Errors
    /// As [`Pool::map`].
    #[inline]
    pub fn map_with_attrs<B: DmaBuffer, T: Translate>(
        &self,
        dev: &Device<T>,
        buffer: B,
        dir: Direction,
        attrs: Attrs,
    ) -> core::result::Result<Mapping<'_, B, P>, MapFailed<B>> {
        let buffer = RawBuffer::new(buffer);
        let (phys, direct) = dev.direct(buffer.ptr().as_ptr(), buffer.len());
        if direct {
            let dma = dev.phys_to_dma(phys);
            return Ok(Mapping::direct(Owner::Pool(self), buffer, dma, dir));
        }
        self.bounce_buffer(dev, phys, buffer, dir, attrs)
            .map_err(|(error, buffer)| MapFailed::new(error, buffer))
    }

    /// The bounce half of a safe map: `buffer` (physical address `phys`)
    /// through this pool, whatever the device could reach.
    #[inline]
    pub(crate) fn bounce_buffer<B: DmaBuffer, T: Translate>(
        &self,
        dev: &Device<T>,
        phys: PhysAddr,
        buffer: RawBuffer<B>,
        dir: Direction,
        attrs: Attrs,
    ) -> core::result::Result<Mapping<'_, B, P>, (Error, RawBuffer<B>)> {
        let _ = attrs;
        let r = self.bounce_buffer_in(Owner::Pool(self), dev, phys, buffer, dir);
        if let Err((e, _)) = &r {
            self.count_failure(e);
        }
        r
    }

    /// [`Pool::bounce_buffer`] for `owner`, which lives at least as long
    /// as this pool is borrowed; failures are not counted.
    #[inline]
    pub(crate) fn bounce_buffer_in<'p, B: DmaBuffer, T: Translate>(
        &'p self,
        owner: Owner<'p, P>,
        dev: &Device<T>,
        phys: PhysAddr,
        buffer: RawBuffer<B>,
        dir: Direction,
    ) -> core::result::Result<Mapping<'p, B, P>, (Error, RawBuffer<B>)> {
        let (ptr, len) = (buffer.ptr(), buffer.len());
        // SAFETY:
        // - `ptr` is valid for reads and writes of `len` bytes and nothing
        //   else accesses them until the parts are put back together
        //   (`DmaBuffer` contract); the returned `Mapping` owns the parts
        //   and accesses the bytes only through the pool's copies until
        //   unmap;
        // - `phys` is the platform's physical address of `ptr`.
        let r = unsafe { self.bounce_inner(dev, phys, ptr.as_ptr(), len, MapOptions::default()) };
        match r {
            // SAFETY: `b` was just allocated in this pool for `buffer`'s
            // region, and this pool lives for the mapping's borrow `'p`.
            Ok(b) => Ok(unsafe { Mapping::bounced(self, owner, Held::Lasting, buffer, dir, b) }),
            Err(error) => Err((error, buffer)),
        }
    }
}

impl<'p, B: DmaBuffer, P: Policy> Mapping<'p, B, P> {
    /// A direct mapping of `buffer`, counted under `owner`.
    pub(crate) fn direct(
        owner: Owner<'p, P>,
        buffer: RawBuffer<B>,
        dma: DmaAddr,
        dir: Direction,
    ) -> Self {
        if let Some(pool) = owner.home() {
            pool.count_direct();
        }
        Mapping {
            buffer,
            dma,
            dir,
            owner,
            bounce: None,
        }
    }

    /// A mapping of `buffer` bounced through `b`.
    ///
    /// # Safety
    /// - `b` is a live allocation of `pool`, made for `buffer`'s region,
    ///   and owned by the new mapping alone;
    /// - `pool` stays valid for as long as `b`'s slots are held, as `held`
    ///   says: for `'p` (`Lasting`), or, in the tlb `owner`, until the
    ///   slots are given back (`Grown`, `Transient`).
    pub(crate) unsafe fn bounced(
        pool: &Pool<P>,
        owner: Owner<'p, P>,
        held: Held,
        buffer: RawBuffer<B>,
        dir: Direction,
        b: Bounce,
    ) -> Self {
        Mapping {
            buffer,
            dma: b.dma,
            dir,
            owner,
            // INVARIANT: `pool` holds `b`'s slots and lives as `held` says
            // (the caller's obligations).
            bounce: Some(BounceRef {
                pool: NonNull::from(pool),
                held,
                start: b.start,
                nslots: b.nslots,
                off: (b.phys - pool.start()) as usize,
                phys: b.phys,
            }),
        }
    }
}

impl<P: Policy> BounceRef<P> {
    /// The pool. Not to be called after the slots are given back.
    #[inline]
    fn pool(&self) -> &Pool<P> {
        // SAFETY: the pointer is valid while the mapping holds its slots
        // (type invariant); a `BounceRef` is taken out of its mapping
        // before the slots are given back, and the pool is not used after.
        unsafe { self.pool.as_ref() }
    }
}

impl<B: DmaBuffer, P: Policy> Mapping<'_, B, P> {
    /// The address the device uses.
    pub fn dma_addr(&self) -> DmaAddr {
        self.dma
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.buffer.len()
    }

    /// Whether the mapping is empty.
    pub fn is_empty(&self) -> bool {
        self.buffer.len() == 0
    }

    /// The direction given at map time.
    pub fn direction(&self) -> Direction {
        self.dir
    }

    /// Whether the mapping bounces through the pool.
    pub fn is_bounced(&self) -> bool {
        self.bounce.is_some()
    }

    /// The bounce address (CPU physical) if the mapping bounces.
    pub fn bounce_phys(&self) -> Option<PhysAddr> {
        self.bounce.map(|b| b.phys)
    }

    /// The CPU address of the bytes the device accesses: the bounce slots
    /// or, for a direct mapping, the buffer. For simulated devices and
    /// tests; touching these bytes from the CPU is the device's part.
    pub fn device_ptr(&self) -> NonNull<u8> {
        match &self.bounce {
            Some(b) => NonNull::new(b.pool().slot_ptr(b.off)).unwrap_or(self.buffer.ptr()),
            None => self.buffer.ptr(),
        }
    }

    fn check(&self, offset: usize, len: usize) -> Result {
        let mapping_len = self.buffer.len();
        if offset.checked_add(len).is_none_or(|end| end > mapping_len) {
            let e = Error::OutOfBounds {
                offset,
                len,
                mapping_len,
            };
            match &self.bounce {
                Some(b) => b.pool().count_failure(&e),
                None => {
                    if let Some(pool) = self.owner.home() {
                        pool.count_failure(&e);
                    }
                }
            }
            return Err(e);
        }
        Ok(())
    }

    /// Copies device writes in `[offset, offset + len)` into the buffer, for
    /// from-device and bidirectional mappings (Linux
    /// `dma_sync_single_for_cpu`); nothing for direct or to-device ones.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] past the mapping's end; nothing is copied.
    pub fn sync_for_cpu(&mut self, offset: usize, len: usize) -> Result {
        self.sync(offset, len, false)
    }

    /// Copies CPU writes in `[offset, offset + len)` of the buffer into the
    /// slots, for to-device and bidirectional mappings (Linux
    /// `dma_sync_single_for_device`).
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] past the mapping's end; nothing is copied.
    pub fn sync_for_device(&mut self, offset: usize, len: usize) -> Result {
        self.sync(offset, len, true)
    }

    /// The copy of a partial sync, checked whatever the direction.
    fn sync(&mut self, offset: usize, len: usize, to_device: bool) -> Result {
        self.check(offset, len)?;
        let copies = if to_device {
            self.dir.copies_to_device()
        } else {
            self.dir.copies_to_cpu()
        };
        if let (Some(b), true) = (self.bounce, copies) {
            let pool = b.pool();
            let slot = pool.slot_ptr(b.off + offset);
            // SAFETY: `[offset, offset + len)` is inside the mapping
            // (checked), so `offset` stays inside the buffer's region.
            let buf = unsafe { self.buffer.ptr().as_ptr().add(offset) };
            let (dst, src) = if to_device { (slot, buf) } else { (buf, slot) };
            // SAFETY:
            // - both ranges are inside the mapping (checked): the buffer's
            //   region is valid while taken apart (`DmaBuffer`), the slots
            //   belong to this allocation;
            // - pool and buffer do not overlap;
            // - nothing else accesses the buffer: the mapping holds its
            //   parts and hands out no reference, and `&mut self` excludes
            //   a concurrent copy.
            unsafe { bounce_copy(dst, src, len) };
            pool.count_bytes(b.start, to_device, len);
        }
        Ok(())
    }

    /// Reads `out.len()` bytes of the buffer (the CPU's copy) at `offset`.
    /// After a [`Mapping::sync_for_cpu`] this is what the device wrote.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] past the mapping's end.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result {
        self.check(offset, out.len())?;
        // SAFETY: the range is inside the mapping (checked), so `offset`
        // stays inside the buffer's region.
        let src = unsafe { self.buffer.ptr().as_ptr().add(offset) };
        // SAFETY:
        // - `src` is valid for `out.len()` reads (checked, `DmaBuffer`);
        // - `out` is a distinct Rust buffer the mapping does not own;
        // - a device may write a direct mapping concurrently: the audited
        //   copy reads each byte once and decides nothing from it.
        unsafe { bounce_copy(out.as_mut_ptr(), src, out.len()) };
        Ok(())
    }

    /// Writes `data` into the buffer (the CPU's copy) at `offset`; a
    /// [`Mapping::sync_for_device`] then shows it to a bouncing device.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] past the mapping's end.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Result {
        self.check(offset, data.len())?;
        // SAFETY: the range is inside the mapping (checked), so `offset`
        // stays inside the buffer's region.
        let dst = unsafe { self.buffer.ptr().as_ptr().add(offset) };
        // SAFETY:
        // - `dst` is valid for `data.len()` writes (checked, `DmaBuffer`);
        // - `data` is a distinct Rust buffer the mapping does not own;
        // - `&mut self` excludes every other CPU access through the
        //   mapping.
        unsafe { bounce_copy(dst, data.as_ptr(), data.len()) };
        Ok(())
    }

    /// Unmaps, copying device writes back for from-device and
    /// bidirectional mappings, and gives the buffer back.
    pub fn unmap(self) -> B {
        self.unmap_with_attrs(Attrs::NONE)
    }

    /// [`Mapping::unmap`] with attributes (`SKIP_CPU_SYNC` skips the
    /// copy-back).
    pub fn unmap_with_attrs(self, attrs: Attrs) -> B {
        let mut this = ManuallyDrop::new(self);
        this.release(attrs);
        // SAFETY: `buffer` is read out exactly once: `this` is never
        // dropped (ManuallyDrop), so neither its `Drop` nor the field's
        // runs; the other fields own nothing that needs dropping.
        let buffer = unsafe { core::ptr::read(&this.buffer) };
        // The slots are given back: no copy touches the bytes again.
        buffer.into_buffer()
    }

    /// Gives the slots back, copying back first unless `attrs` or the
    /// direction say not to. Nothing of the pool is touched after the
    /// release that may leave it idle.
    fn release(&mut self, attrs: Attrs) {
        let Some(b) = self.bounce.take() else {
            return;
        };
        let pool = b.pool();
        let len = self.buffer.len();
        let copy_back = self.dir.copies_to_cpu() && !attrs.contains(Attrs::SKIP_CPU_SYNC);
        if copy_back {
            // SAFETY:
            // - the slots at `b.off` hold the mapping's `len` bytes, and the
            //   buffer's region is valid for `len` writes (`DmaBuffer`);
            // - pool and buffer do not overlap;
            // - nothing else accesses the buffer (as in `sync`).
            unsafe { bounce_copy(self.buffer.ptr().as_ptr(), pool.slot_ptr(b.off), len) };
        }
        let copied = if copy_back { len } else { 0 };
        let pool_start = pool.start();
        let dma = self.dma;
        let give_back = || {
            let r = pool.release(b.start, b.nslots, dma, copied, 0);
            // A safe mapping owns its allocation, so it is live.
            debug_assert!(r.is_ok(), "safe mapping was not live: {r:?}");
        };
        match (self.owner, b.held) {
            #[cfg(feature = "alloc")]
            (Owner::Tlb(tlb), Held::Grown) => tlb.guard_release(&give_back),
            _ => give_back(),
        }
        // From here on the pool may be gone: only its address is used.
        #[cfg(feature = "alloc")]
        if let Owner::Tlb(tlb) = self.owner {
            tlb.after_release(pool_start, b.held);
        }
        #[cfg(not(feature = "alloc"))]
        let _ = pool_start;
    }
}

// SAFETY: a mapping owns its buffer's parts and borrows a `Pool`, which is
// `Sync`, or a tlb, which is `Sync` too; its raw
// pointers point into `B`'s own bytes and into the pool, so sending the
// mapping sends exactly what sending `B` (and its rest) would.
unsafe impl<B: DmaBuffer + Send, P: Policy> Send for Mapping<'_, B, P> where B::Rest: Send {}

// SAFETY: through `&Mapping` the CPU only reads the buffer (`read`,
// `device_ptr`); every method that writes the buffer or the slots takes
// `&mut self`, so shared references never race with each other.
unsafe impl<B: DmaBuffer + Sync, P: Policy> Sync for Mapping<'_, B, P> where B::Rest: Sync {}

impl<B: DmaBuffer, P: Policy> Drop for Mapping<'_, B, P> {
    fn drop(&mut self) {
        self.release(Attrs::SKIP_CPU_SYNC);
        // The buffer field drops after this, put back together, once the
        // slots are given back.
    }
}

impl<B: DmaBuffer, P: Policy> core::fmt::Debug for Mapping<'_, B, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mapping")
            .field("dma", &self.dma)
            .field("len", &self.buffer.len())
            .field("dir", &self.dir)
            .field("bounced", &self.bounce.is_some())
            .finish()
    }
}
