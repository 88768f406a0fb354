//! Simulations through the raw API, made safe: [`Simulator`].
//!
//! Only the raw API ([`Pool::bounce_raw`]) lets a caller say everything
//! that decides where a mapping lands: the original's physical address
//! (its low bits under `min_align_mask`), the `alloc_align_mask` and the
//! area to search first. A simulation wants exactly that ("3000 bytes at
//! physical `0x1234_5a10` for an NVMe device, from CPU 3"), and the
//! command line that runs simulations forbids unsafe code. So this module
//! makes the raw calls once, for everyone, and keeps their contract by
//! construction: the simulator owns the pool and one original buffer per
//! live mapping, and nothing else can reach either.
//!
//! It is a real run, not a model of one. Every original holds a fresh byte
//! pattern, the simulator plays the device (it writes its own patterns into
//! the slots of from-device and bidirectional mappings, and the CPU writes
//! new data before a `sync_for_device`), and after every operation it
//! compares the original and the slots with a shadow of what Linux's
//! semantics say they must hold: the map-time copy for every direction
//! (CVE-2022-0854), copy-back only for from-device and bidirectional
//! mappings, partial syncs touching only their range. A difference is a
//! [`SimError::Mismatch`]: a bug in the engine, never in the script.
//!
//! Its statistics are Linux's too: `io_tlb_used_hiwater` is the exact
//! pool-wide mark ([`Hiwater::Exact`]) on any number of areas.
//!
//! # Placement
//! The simulated device sees the pool at device address [`SIM_DMA_BASE`],
//! 4 GiB (an [`Offset`] translation). Alignment and segment boundaries are
//! judged in device address space, and a heap pool lands at a different
//! address on every run; at a fixed base a script gives the same slots on
//! every run and machine, and a bounce address is that base plus its
//! offset in the pool ([`Simulator::offset_of`]). The base is not 0
//! because no pool hands out device address 0 ([`Error::DmaZeroInPool`]);
//! it is a multiple of 4 GiB, so every mask below 4 GiB (alignment, the
//! default segment boundary) judges each slot exactly as at base 0.
//!
//! ```
//! use swiotlb::sim::{MapParams, Simulator};
//! use swiotlb::{Direction, NextFit, PhysAddr, PoolConfig};
//!
//! let mut sim = Simulator::<NextFit, &str>::new(1024, PoolConfig::default()).unwrap();
//! let nvme = MapParams {
//!     orig: PhysAddr(0x1234_5a10),
//!     min_align_mask: 0xfff,
//!     ..MapParams::default()
//! };
//! let b = sim.map_with("rx", 3000, Direction::FromDevice, nvme).unwrap();
//! // The bits of the original under `min_align_mask` reappear.
//! assert_eq!(sim.offset_of(&b) & 0xfff, 0xa10);
//! sim.sync_for_cpu("rx", 0, 512).unwrap();
//! let back = sim.unmap("rx").unwrap();
//! assert_eq!(back.len(), 3000);
//! assert_eq!(sim.stats().io_tlb_used, 0);
//! ```

use alloc::collections::btree_map::{BTreeMap, Entry};
use alloc::vec::Vec;
use core::borrow::Borrow;
use core::fmt;
use core::ops::Range;

use crate::addr::{DmaAddr, DmaMask, PhysAddr};
use crate::attrs::Attrs;
use crate::device::Device;
use crate::direction::Direction;
use crate::error::{Error, PoolProblem};
use crate::map::MapOptions;
use crate::pool::{Bounce, Fast, Hiwater, Policy, Pool, PoolConfig};
use crate::stats::Stats;
use crate::translate::Offset;

mod slots;
pub use slots::{Placed, SlotPool};

/// The device address at which the simulated device sees the pool: 4 GiB,
/// a multiple of every alignment and the default segment boundary, and not
/// 0 (see the [module documentation](self)).
pub const SIM_DMA_BASE: u64 = 1 << 32;

/// Where and how one simulated mapping asks to be placed, beyond its size
/// and direction. The default is Linux's plainest case: no original
/// address, no masks, CPU 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapParams {
    /// The original buffer's physical address. It decides placement only:
    /// its bits under `min_align_mask` reappear in the bounce address.
    /// `0` means "none", and then Linux skips the min-align check.
    pub orig: PhysAddr,
    /// The device's `min_align_mask` (Linux `dma_set_min_align_mask`):
    /// `2^n - 1`, or `0` for none. NVMe sets `0xfff`.
    pub min_align_mask: u64,
    /// The `alloc_align_mask` of the map call (Linux
    /// `swiotlb_tbl_map_single`): `2^n - 1`, or `0` for none. Other values
    /// are the engine's to refuse.
    pub alloc_align_mask: u64,
    /// The CPU that maps: the search starts in area `cpu % nareas`.
    pub cpu: usize,
}

/// Which side of a mapping a [`SimError::Mismatch`] was found on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The CPU's original buffer.
    Original,
    /// The bounce slots the device sees.
    Slots,
}

/// Why a simulated operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SimError {
    /// The engine refused the operation; it counted the failure in the
    /// pool's statistics, and nothing changed.
    Engine(Error),
    /// A map under an id that is already mapped.
    IdInUse,
    /// An unmap or sync of an id that is not mapped.
    UnknownId,
    /// A `min_align_mask` that is not `2^n - 1`; no device can have one.
    BadMinAlignMask {
        /// The mask given.
        mask: u64,
    },
    /// The simulator could not allocate the original buffer.
    NoMemory {
        /// Bytes asked for.
        size: usize,
    },
    /// The bytes of a mapping differ from what the engine's semantics say
    /// they must be: the engine copied too little, too much, from the wrong
    /// place or in the wrong direction.
    Mismatch {
        /// Where the difference is.
        side: Side,
        /// Byte offset of the first differing byte in the mapping.
        offset: usize,
    },
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SimError::Engine(e) => e.fmt(f),
            SimError::IdInUse => f.write_str("the id is already mapped"),
            SimError::UnknownId => f.write_str("the id is not mapped"),
            SimError::BadMinAlignMask { mask } => {
                write!(f, "min_align_mask {mask:#x} is not 2^n - 1")
            }
            SimError::NoMemory { size } => {
                write!(f, "cannot allocate a {size}-byte original buffer")
            }
            SimError::Mismatch { side, offset } => write!(
                f,
                "swiotlb engine check failed: the {} differ from the expected bytes at offset {offset}",
                match side {
                    Side::Original => "original buffer's bytes",
                    Side::Slots => "bounce slots",
                }
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for SimError {}

impl From<Error> for SimError {
    fn from(e: Error) -> Self {
        SimError::Engine(e)
    }
}

/// One live mapping: its original buffer and what both sides must hold.
struct Live {
    /// The original. While the mapping is live it is reached only through
    /// `buf.as_mut_ptr()`, never through a reference, and never resized:
    /// the engine holds its address and copies into it.
    buf: Vec<u8>,
    /// The device the mapping was made for (unmap and sync use the same).
    dev: Device<Offset>,
    dir: Direction,
    bounce: Bounce,
    dma: DmaAddr,
    /// Byte offset of the bounce address in the pool.
    off: usize,
    /// What the original must hold.
    want_orig: Vec<u8>,
    /// What the slots must hold.
    want_slots: Vec<u8>,
}

/// A bounce pool of its own, driven through the raw API with owned
/// original buffers, checking every copy the engine makes.
///
/// Mappings are named by ids of type `K` (numbers, strings, ...). See the
/// [module documentation](self) for what is checked and where the pool
/// sits.
///
/// # Invariants
/// Every entry of `live` is a mapping the pool holds, made by
/// [`Pool::bounce_raw`] over `buf.as_mut_ptr()` and `buf.len()` and not
/// yet unmapped. While it is there its `buf` is never resized and is
/// reached only through raw pointers, and its slots are touched by the CPU
/// only through the engine or the simulated device in this module.
pub struct Simulator<P: Policy = Fast, K = u64> {
    // Declared before `live` so it drops first: an original is freed only
    // once no pool exists that could copy into it.
    pool: Pool<P>,
    translate: Offset,
    live: BTreeMap<K, Live>,
    /// Patterns made so far; each new one is seeded from it.
    patterns: u64,
}

impl<P: Policy, K: Ord> Simulator<P, K> {
    /// A simulator over a heap pool of `nslabs` slots of `config`'s
    /// geometry, keeping Linux's exact pool-wide high-water mark
    /// ([`Hiwater::Exact`]) whatever the number of areas: its
    /// `io_tlb_used_hiwater` is the most slots held at once, as Linux
    /// reports for the same operations, never a sum of per-area marks.
    /// The shared counter costs nothing here, since one caller makes every
    /// map and unmap (`&mut self`).
    ///
    /// # Errors
    /// [`Error::InvalidPool`] as [`Pool::new_heap`] gives it: no slots, a
    /// geometry out of range, or a pool too large to allocate.
    pub fn new(nslabs: u32, config: PoolConfig) -> Result<Self, Error> {
        let too_many = Error::InvalidPool {
            base: PhysAddr(0),
            problem: PoolProblem::TooManySlots,
        };
        let slot = 1u64
            .checked_shl(config.slot_shift)
            .ok_or(Error::InvalidPool {
                base: PhysAddr(0),
                problem: PoolProblem::BadGeometry,
            })?;
        let len = u64::from(nslabs).checked_mul(slot).ok_or(too_many)?;
        let len = usize::try_from(len).map_err(|_| too_many)?;
        let pool = Pool::new_heap(len, config)?.with_hiwater(Hiwater::Exact);
        let translate = Offset::new(pool.start(), DmaAddr(SIM_DMA_BASE));
        Ok(Self {
            pool,
            translate,
            live: BTreeMap::new(),
            patterns: 0,
        })
    }

    /// The pool, for its geometry and for reading its state.
    pub fn pool(&self) -> &Pool<P> {
        &self.pool
    }

    /// The pool's statistics.
    pub fn stats(&self) -> Stats {
        self.pool.stats()
    }

    /// Mappings live now.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// Where the live mapping `id` sits, if it is mapped.
    pub fn bounce<Q>(&self, id: &Q) -> Option<Bounce>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.live.get(id).map(|l| l.bounce)
    }

    /// The bounce address of `bounce` as a byte offset into the pool: its
    /// device address less [`SIM_DMA_BASE`], the same on every run.
    pub fn offset_of(&self, bounce: &Bounce) -> u64 {
        bounce.phys - self.pool.start()
    }

    /// Maps `size` bytes under `id` with the default [`MapParams`].
    ///
    /// # Errors
    /// As [`Simulator::map_with`].
    pub fn map(&mut self, id: K, size: usize, dir: Direction) -> Result<Bounce, SimError> {
        self.map_with(id, size, dir, MapParams::default())
    }

    /// Maps `size` bytes of a fresh original under `id`: Linux's
    /// `swiotlb_tbl_map_single` for a device that always bounces. Checks
    /// that the slots received the original whatever the direction, then,
    /// for from-device and bidirectional mappings, plays the device and
    /// writes the slots.
    ///
    /// # Errors
    /// [`SimError::IdInUse`], [`SimError::BadMinAlignMask`] and
    /// [`SimError::NoMemory`] before the engine is called;
    /// [`SimError::Engine`] with the engine's reason (counted in the
    /// statistics), given before any allocation for a size larger than
    /// any segment ([`Pool::max_mapping_size`] with no mask); [`SimError::Mismatch`] if the map-time copy is wrong
    /// (the mapping then stays live).
    pub fn map_with(
        &mut self,
        id: K,
        size: usize,
        dir: Direction,
        params: MapParams,
    ) -> Result<Bounce, SimError> {
        let slot = match self.live.entry(id) {
            Entry::Occupied(_) => return Err(SimError::IdInUse),
            Entry::Vacant(v) => v,
        };
        let m = params.min_align_mask;
        if m & m.wrapping_add(1) != 0 {
            return Err(SimError::BadMinAlignMask { mask: m });
        }
        // No segment holds more than `max_mapping_size(0)` bytes, so the
        // engine refuses a larger size before it looks at the original
        // (after judging the alignment mask, as here). Give its answer,
        // counted, without first allocating and filling an original that
        // can be as large as the caller likes.
        if size > self.pool.max_mapping_size(0) {
            let a = params.alloc_align_mask;
            let e = if a & a.wrapping_add(1) != 0 {
                Error::AlignmentImpossible {
                    align_mask: a,
                    min_align_mask: m,
                }
            } else {
                Error::TooLarge {
                    size,
                    max: self.pool.max_mapping_size(m),
                }
            };
            self.pool.count_failure(&e);
            return Err(SimError::Engine(e));
        }
        let want_orig = fresh(&mut self.patterns, size)?;
        let mut buf = Vec::new();
        buf.try_reserve_exact(size)
            .map_err(|_| SimError::NoMemory { size })?;
        buf.extend_from_slice(&want_orig);
        let dev = Device::new(DmaMask::BITS_64)
            .with_force_bounce()
            .with_min_align_mask(m)
            .with_translate(self.translate);
        let opts = MapOptions {
            alloc_align_mask: params.alloc_align_mask,
            area_hint: Some(params.cpu),
        };
        // SAFETY:
        // - `buf.as_mut_ptr()` is valid for reads and writes of
        //   `size == buf.len()` bytes: `buf` is stored in `live` below and
        //   is neither resized nor dropped until `unmap` has unmapped it
        //   (type invariant); on failure nothing stays mapped and `buf` is
        //   dropped unused;
        // - it is not accessed through Rust references meanwhile: `live`
        //   is private and this module reaches a live `buf` only through
        //   raw pointers (type invariant);
        // - `params.orig` stands in for the physical address of the
        //   buffer; the contract lets it be any value (it decides
        //   alignment only), and choosing it is the point of simulating.
        let bounce = unsafe {
            self.pool
                .bounce_raw(&dev, params.orig, buf.as_mut_ptr(), size, Attrs::NONE, opts)
        }?;
        let off = (bounce.phys - self.pool.start()) as usize;
        // INVARIANT: `live` holds the mapping just made over its `buf`.
        let live = slot.insert(Live {
            buf,
            dma: bounce.dma,
            dev,
            dir,
            bounce,
            off,
            want_slots: want_orig.clone(),
            want_orig,
        });
        live.check(&self.pool)?;
        if dir.copies_to_cpu() {
            let data = fresh(&mut self.patterns, size)?;
            live.device_writes(&self.pool, 0..size, data);
        }
        Ok(bounce)
    }

    /// Unmaps `id`: Linux `swiotlb_tbl_unmap_single`. Checks both sides
    /// before, and after the copy-back that the original holds the slots'
    /// bytes (from-device and bidirectional) or its own (to-device).
    /// Returns the original buffer.
    ///
    /// # Errors
    /// [`SimError::UnknownId`]; [`SimError::Engine`] if the engine refuses
    /// (the mapping then stays live); [`SimError::Mismatch`].
    pub fn unmap<Q>(&mut self, id: &Q) -> Result<Vec<u8>, SimError>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let (key, live) = self.live.remove_entry(id).ok_or(SimError::UnknownId)?;
        if let Err(e) = live.check(&self.pool) {
            self.live.insert(key, live);
            return Err(e);
        }
        // SAFETY:
        // - the original `live.buf` is still valid for writes and not
        //   referenced: it was live until just now (type invariant), and is
        //   put back in `live` below if the engine keeps the mapping;
        // - the device no longer accesses the mapping: the simulated device
        //   is this module, which is done with it.
        let r = unsafe {
            self.pool
                .unmap_raw(&live.dev, live.dma, live.buf.len(), live.dir, Attrs::NONE)
        };
        if let Err(e) = r {
            self.live.insert(key, live);
            return Err(SimError::Engine(e));
        }
        let want = if live.dir.copies_to_cpu() {
            live.want_slots
        } else {
            live.want_orig
        };
        // The mapping is gone: the buffer is the CPU's again.
        if let Some(offset) = first_difference(&live.buf, &want) {
            return Err(SimError::Mismatch {
                side: Side::Original,
                offset,
            });
        }
        Ok(live.buf)
    }

    /// Makes the CPU's writes to `[offset, offset + len)` of `id` visible
    /// to the device: for to-device and bidirectional mappings the CPU
    /// first writes new data there, then the engine copies it into the
    /// slots (Linux `swiotlb_sync_single_for_device`).
    ///
    /// # Errors
    /// [`SimError::UnknownId`]; [`SimError::Engine`] with
    /// [`Error::OutOfBounds`] for a range past the mapping's end (nothing
    /// copied); [`SimError::Mismatch`].
    pub fn sync_for_device<Q>(&mut self, id: &Q, offset: usize, len: usize) -> Result<(), SimError>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.sync(id, offset, len, true)
    }

    /// Makes the device's writes to `[offset, offset + len)` of `id`
    /// visible to the CPU: for from-device and bidirectional mappings the
    /// engine copies the slots into the original (Linux
    /// `swiotlb_sync_single_for_cpu`), and the device then writes new data
    /// there, as a device that keeps going would.
    ///
    /// # Errors
    /// As [`Simulator::sync_for_device`].
    pub fn sync_for_cpu<Q>(&mut self, id: &Q, offset: usize, len: usize) -> Result<(), SimError>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.sync(id, offset, len, false)
    }

    fn sync<Q>(
        &mut self,
        id: &Q,
        offset: usize,
        len: usize,
        to_device: bool,
    ) -> Result<(), SimError>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let live = self.live.get_mut(id).ok_or(SimError::UnknownId)?;
        let size = live.buf.len();
        let dir = live.dir;
        let copies = if to_device {
            dir.copies_to_device()
        } else {
            dir.copies_to_cpu()
        };
        let inside = offset.checked_add(len).is_some_and(|end| end <= size);
        // The raw API finds a mapping by address, so it cannot tell a range
        // that starts past this mapping's end from the next mapping's
        // slots. Such a range is refused here and counted as misuse, as the
        // safe `Mapping` does; every range that starts inside the mapping
        // goes to the engine, which checks its end.
        if offset >= size && !inside {
            let e = Error::OutOfBounds {
                offset,
                len,
                mapping_len: size,
            };
            self.pool.count_failure(&e);
            return Err(SimError::Engine(e));
        }
        if offset == size {
            // An empty range at the very end: the address would already be
            // past the mapping, and there is nothing to copy.
            return Ok(());
        }
        if to_device && copies && inside {
            let data = fresh(&mut self.patterns, len)?;
            live.cpu_writes(offset..offset + len, data);
        }
        // `offset < size`, and the mapping lies inside the pool, which sits
        // at device address `SIM_DMA_BASE`, far below the top: no overflow.
        let dma = live.dma + offset as u64;
        let r = if to_device {
            // SAFETY:
            // - the mapping's original `live.buf` is still valid for writes
            //   and not referenced: the mapping is live (type invariant);
            // - the device may go on using other parts of the mapping: the
            //   simulated device is this module, and it does not run
            //   during the call.
            unsafe { self.pool.sync_for_device_raw(&live.dev, dma, len, live.dir) }
        } else {
            // SAFETY: the same two obligations, argued the same way: the
            // original is live and unreferenced (type invariant), and the
            // simulated device does not run during the call.
            unsafe { self.pool.sync_for_cpu_raw(&live.dev, dma, len, live.dir) }
        };
        r?;
        let range = offset..offset + len;
        if copies {
            if to_device {
                live.want_slots[range.clone()].copy_from_slice(&live.want_orig[range.clone()]);
            } else {
                live.want_orig[range.clone()].copy_from_slice(&live.want_slots[range.clone()]);
            }
        }
        live.check(&self.pool)?;
        if copies && !to_device {
            let data = fresh(&mut self.patterns, len)?;
            live.device_writes(&self.pool, range, data);
        }
        Ok(())
    }

    /// Checks both sides of every live mapping against what they must hold.
    ///
    /// # Errors
    /// The first [`SimError::Mismatch`] found.
    pub fn verify(&self) -> Result<(), SimError> {
        self.live.values().try_for_each(|l| l.check(&self.pool))
    }
}

impl<P: Policy, K> fmt::Debug for Simulator<P, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulator")
            .field("pool", &self.pool)
            .field("live", &self.live.len())
            .finish()
    }
}

impl Live {
    /// Checks the original and the slots against what they must hold.
    fn check<P: Policy>(&self, pool: &Pool<P>) -> Result<(), SimError> {
        let len = self.buf.len();
        // SAFETY:
        // - `buf` is valid for reads of `len` bytes (it is live, type
        //   invariant);
        // - nothing writes it meanwhile: the engine copies only inside
        //   calls, and `&Live` excludes the simulated device; it is read
        //   through a pointer, never a reference.
        let orig = unsafe { snapshot(self.buf.as_ptr(), len) };
        // SAFETY:
        // - the pool's slots from `off` hold the mapping's `len` bytes (the
        //   mapping is live, type invariant);
        // - nothing writes them meanwhile, as for the original.
        let slots = unsafe { snapshot(pool.slot_ptr(self.off), len) };
        if let Some(offset) = first_difference(&orig, &self.want_orig) {
            return Err(SimError::Mismatch {
                side: Side::Original,
                offset,
            });
        }
        if let Some(offset) = first_difference(&slots, &self.want_slots) {
            return Err(SimError::Mismatch {
                side: Side::Slots,
                offset,
            });
        }
        Ok(())
    }

    /// The simulated device writes `data` into the slots at `range`.
    fn device_writes<P: Policy>(&mut self, pool: &Pool<P>, range: Range<usize>, data: Vec<u8>) {
        debug_assert!(range.end <= self.buf.len() && data.len() == range.len());
        // SAFETY:
        // - the slots of this live mapping hold `buf.len() >= range.end`
        //   bytes from `off`, inside the pool, so the destination is valid
        //   for `range.len()` writes; `data` is a distinct vector;
        // - the slots belong to this mapping alone (pool invariant), and no
        //   engine call runs meanwhile (`&mut self`).
        unsafe {
            core::ptr::copy_nonoverlapping(
                data.as_ptr(),
                pool.slot_ptr(self.off + range.start),
                range.len(),
            )
        };
        self.want_slots[range].copy_from_slice(&data);
    }

    /// The CPU writes `data` into the original at `range`.
    fn cpu_writes(&mut self, range: Range<usize>, data: Vec<u8>) {
        debug_assert!(range.end <= self.buf.len() && data.len() == range.len());
        // SAFETY: `range.start <= buf.len()` (checked above), so the
        // offset stays inside the vector's allocation.
        let dst = unsafe { self.buf.as_mut_ptr().add(range.start) };
        // SAFETY:
        // - `range` lies inside `buf`, valid for writes while it lives;
        // - `data` is a distinct vector, so the ranges do not overlap;
        // - no engine call runs meanwhile (`&mut self`), and the write goes
        //   through a pointer, not a reference, as the raw API's contract
        //   asks while the mapping is live.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), dst, range.len()) };
        self.want_orig[range].copy_from_slice(&data);
    }
}

/// Copies `len` bytes at `src` into a new vector.
///
/// # Safety
/// `src` is valid for reads of `len` bytes, and nothing writes them during
/// the call.
unsafe fn snapshot(src: *const u8, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    // SAFETY:
    // - `src` is valid for `len` reads (the caller) and `v` has capacity
    //   for `len` writes;
    // - a fresh vector never overlaps `src`.
    unsafe { core::ptr::copy_nonoverlapping(src, v.as_mut_ptr(), len) };
    // SAFETY:
    // - `len` is within the capacity reserved above;
    // - the `len` bytes were initialised by the copy just made.
    unsafe { v.set_len(len) };
    v
}

/// The offset of the first byte where `a` and `b` differ.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    // Equal is the answer nearly always; slice equality is one `memcmp`.
    if a == b {
        return None;
    }
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then(|| a.len().min(b.len())))
}

/// `len` bytes of a pattern unlike any other this simulator made (the
/// workspace's seeded generator, `rand`'s xoshiro256++, seeded from a
/// counter), so that a copy from the wrong place, of the wrong age or in
/// the wrong direction shows.
fn fresh(counter: &mut u64, len: usize) -> Result<Vec<u8>, SimError> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| SimError::NoMemory { size: len })?;
    v.resize(len, 0);
    *counter += 1;
    let mut rng: rand::rngs::Xoshiro256PlusPlus = rand::SeedableRng::seed_from_u64(*counter);
    rand::Rng::fill_bytes(&mut rng, &mut v);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FailReason;
    use crate::pool::NextFit;
    use alloc::boxed::Box;
    use alloc::string::{String, ToString};

    fn both(f: impl Fn(&mut dyn FnMut(u32, PoolConfig) -> Box<dyn Sim>)) {
        f(&mut |n, c| Box::new(Simulator::<Fast, u32>::new(n, c).unwrap()));
        f(&mut |n, c| Box::new(Simulator::<NextFit, u32>::new(n, c).unwrap()));
    }

    /// The simulator over either policy, for tests that hold for both.
    trait Sim {
        fn map_with(
            &mut self,
            id: u32,
            size: usize,
            dir: Direction,
            p: MapParams,
        ) -> Result<(Bounce, u64), SimError>;
        fn unmap(&mut self, id: u32) -> Result<Vec<u8>, SimError>;
        fn sync(&mut self, id: u32, off: usize, len: usize, for_cpu: bool) -> Result<(), SimError>;
        fn stats(&self) -> Stats;
        fn verify(&self) -> Result<(), SimError>;
    }

    impl<P: Policy> Sim for Simulator<P, u32> {
        fn map_with(
            &mut self,
            id: u32,
            size: usize,
            dir: Direction,
            p: MapParams,
        ) -> Result<(Bounce, u64), SimError> {
            let b = Simulator::map_with(self, id, size, dir, p)?;
            Ok((b, self.offset_of(&b)))
        }
        fn unmap(&mut self, id: u32) -> Result<Vec<u8>, SimError> {
            Simulator::unmap(self, &id)
        }
        fn sync(&mut self, id: u32, off: usize, len: usize, for_cpu: bool) -> Result<(), SimError> {
            if for_cpu {
                self.sync_for_cpu(&id, off, len)
            } else {
                self.sync_for_device(&id, off, len)
            }
        }
        fn stats(&self) -> Stats {
            Simulator::stats(self)
        }
        fn verify(&self) -> Result<(), SimError> {
            Simulator::verify(self)
        }
    }

    const BIDI: Direction = Direction::Bidirectional;

    /// 512-byte slots in 8-slot segments, so that full pools and
    /// too-large mappings need only small buffers (the tests also run
    /// under miri).
    fn tiny(nareas: u32) -> PoolConfig {
        PoolConfig {
            slot_shift: 9,
            segment: 8,
            nareas,
            ..PoolConfig::default()
        }
    }

    #[test]
    fn consecutive_small_maps_take_consecutive_slots() {
        both(|new| {
            let mut s = new(64, PoolConfig::default());
            for i in 0..3 {
                let (b, addr) = s.map_with(i, 2048, BIDI, MapParams::default()).unwrap();
                assert_eq!((b.slot, b.start, b.nslots), (i, i, 1));
                assert_eq!(addr, u64::from(i) * 2048);
            }
            // A page-sized mapping starts page aligned: slot 3 is skipped.
            let (b, addr) = s.map_with(3, 4096, BIDI, MapParams::default()).unwrap();
            assert_eq!((b.slot, addr, b.nslots), (4, 0x2000, 2));
            assert_eq!(s.stats().io_tlb_used, 5);
            s.verify().unwrap();
        });
    }

    #[test]
    fn min_align_bits_reappear() {
        both(|new| {
            let mut s = new(128, PoolConfig::default());
            // Put something at slot 0 so the alignment has to search.
            s.map_with(0, 100, BIDI, MapParams::default()).unwrap();
            let p = MapParams {
                orig: PhysAddr(0x1234_5a10),
                min_align_mask: 0xfff,
                ..MapParams::default()
            };
            let (b, addr) = s.map_with(1, 3000, Direction::FromDevice, p).unwrap();
            assert_eq!(addr & 0xfff, 0xa10);
            assert_eq!(b.phys.0 & 0x7ff, 0x210);
            s.unmap(1).unwrap();
            // alloc_align_mask aligns the allocation's start.
            let p = MapParams {
                alloc_align_mask: 0xffff,
                ..MapParams::default()
            };
            let (_, addr) = s.map_with(2, 100, Direction::ToDevice, p).unwrap();
            assert_eq!(addr % 0x10000, 0);
            assert_ne!(addr, 0);
        });
    }

    #[test]
    fn every_direction_round_trips_with_partial_syncs() {
        both(|new| {
            let mut s = new(64, PoolConfig::default());
            for (i, dir) in [Direction::ToDevice, Direction::FromDevice, BIDI]
                .into_iter()
                .enumerate()
            {
                let id = i as u32;
                s.map_with(id, 5000, dir, MapParams::default()).unwrap();
                let (cpu, device) = (true, false);
                s.sync(id, 100, 1000, cpu).unwrap();
                s.sync(id, 0, 10, device).unwrap();
                s.sync(id, 4990, 10, cpu).unwrap();
                s.sync(id, 5000, 0, device).unwrap();
                s.sync(id, 2500, 2500, device).unwrap();
                // Again over a range the CPU has already seen: the device
                // wrote it anew after the first sync.
                s.sync(id, 100, 1000, cpu).unwrap();
            }
            s.verify().unwrap();
            for id in 0..3 {
                assert_eq!(s.unmap(id).unwrap().len(), 5000);
            }
            let st = s.stats();
            assert_eq!(st.io_tlb_used, 0);
            // Every map copies; syncs for the device copy for `to` and
            // `bidi` only.
            assert_eq!(st.bytes_to_device, 3 * 5000 + 2 * (10 + 2500));
            // Syncs for the CPU and unmaps copy for `from` and `bidi` only.
            assert_eq!(st.bytes_from_device, 2 * (1000 + 10 + 1000 + 5000));
            assert_eq!(st.total_failures(), 0);
        });
    }

    #[test]
    fn out_of_bounds_syncs_copy_nothing_and_count() {
        let run = || out_of_bounds_syncs();
        #[cfg(not(all(feature = "checker", feature = "std")))]
        run();
        // Each sync the engine refuses is a misuse the checker names: a
        // range no mapping holds whole. Two per simulator (one per
        // policy): the two that start past the end never reach the engine.
        #[cfg(all(feature = "checker", feature = "std"))]
        {
            let ((), found) = crate::checker::collect(run);
            let kinds: alloc::vec::Vec<_> = found.iter().map(|f| f.kind()).collect();
            assert_eq!(kinds, [crate::checker::FindingKind::SyncOutside; 4]);
        }
    }

    fn out_of_bounds_syncs() {
        both(|new| {
            let mut s = new(64, PoolConfig::default());
            s.map_with(0, 2048, BIDI, MapParams::default()).unwrap();
            s.map_with(1, 2048, Direction::ToDevice, MapParams::default())
                .unwrap();
            let oob = |offset, len| {
                Err(SimError::Engine(Error::OutOfBounds {
                    offset,
                    len,
                    mapping_len: 2048,
                }))
            };
            // Runs past the end: the engine's own check.
            assert_eq!(s.sync(0, 2000, 100, true), oob(2000, 100));
            // Starts past the end, where mapping 1's slot is: refused
            // rather than synced into the neighbour.
            assert_eq!(s.sync(0, 2048, 10, false), oob(2048, 10));
            // A direction that copies nothing is still bounds checked.
            assert_eq!(s.sync(1, 0, 4096, false), oob(0, 4096));
            assert_eq!(s.sync(1, usize::MAX, 2, false), oob(usize::MAX, 2));
            assert_eq!(s.stats().failures(FailReason::Misuse), 4);
            s.verify().unwrap();
            s.unmap(0).unwrap();
            s.unmap(1).unwrap();
        });
    }

    #[test]
    fn engine_failures_are_reported_and_counted() {
        both(|new| {
            let mut s = new(8, tiny(1));
            s.map_with(0, 8 * 512, BIDI, MapParams::default()).unwrap();
            assert_eq!(
                s.map_with(1, 512, BIDI, MapParams::default()).unwrap_err(),
                SimError::Engine(Error::PoolFull {
                    requested: 1,
                    free: 0,
                    largest_run: 0
                })
            );
            assert!(matches!(
                s.map_with(1, 0, BIDI, MapParams::default()),
                Err(SimError::Engine(Error::ZeroSize))
            ));
            assert!(matches!(
                s.map_with(1, 8 * 512 + 1, BIDI, MapParams::default()),
                Err(SimError::Engine(Error::TooLarge { .. }))
            ));
            let bad_align = MapParams {
                alloc_align_mask: 0x1001,
                ..MapParams::default()
            };
            assert!(matches!(
                s.map_with(1, 10, BIDI, bad_align),
                Err(SimError::Engine(Error::AlignmentImpossible { .. }))
            ));
            let st = s.stats();
            assert_eq!(st.failures(FailReason::PoolFull), 1);
            assert_eq!(st.failures(FailReason::TooLarge), 2);
            assert_eq!(st.failures(FailReason::Alignment), 1);
            assert_eq!(st.io_tlb_used, 8);
            // The failed ids are free to use again.
            s.unmap(0).unwrap();
            s.map_with(1, 10, BIDI, MapParams::default()).unwrap();
        });
    }

    #[test]
    fn ids_and_masks_are_checked() {
        let mut s = Simulator::<Fast, String>::new(16, PoolConfig::default()).unwrap();
        s.map("a".to_string(), 10, BIDI).unwrap();
        assert_eq!(
            s.map("a".to_string(), 10, BIDI).unwrap_err(),
            SimError::IdInUse
        );
        assert_eq!(s.unmap("b").unwrap_err(), SimError::UnknownId);
        assert_eq!(s.sync_for_cpu("b", 0, 1).unwrap_err(), SimError::UnknownId);
        let p = MapParams {
            min_align_mask: 0x1000,
            ..MapParams::default()
        };
        assert_eq!(
            s.map_with("c".to_string(), 10, BIDI, p).unwrap_err(),
            SimError::BadMinAlignMask { mask: 0x1000 }
        );
        assert_eq!(s.live_count(), 1);
        assert_eq!(s.bounce("a").map(|b| b.slot), Some(0));
        assert_eq!(s.bounce("c"), None);
        s.unmap("a").unwrap();
        assert_eq!(s.unmap("a").unwrap_err(), SimError::UnknownId);
    }

    #[test]
    fn cpu_hint_picks_the_area() {
        let mut s = Simulator::<NextFit, u32>::new(32, tiny(4)).unwrap();
        for cpu in 0..4 {
            let p = MapParams {
                cpu,
                ..MapParams::default()
            };
            let b = s.map_with(cpu as u32, 100, BIDI, p).unwrap();
            assert_eq!(b.slot, cpu as u32 * 8);
        }
        assert_eq!(s.stats().area_used, [1, 1, 1, 1]);
    }

    /// The checks are not vacuous: bytes the engine did not put there are
    /// found.
    #[test]
    fn corruption_is_found() {
        let mut s = Simulator::<Fast, u32>::new(64, PoolConfig::default()).unwrap();
        let b = s.map(0, 300, Direction::ToDevice).unwrap();
        let off = s.offset_of(&b) as usize;
        // SAFETY: byte 7 of the live mapping's slots, written while no
        // engine call runs, as a misbehaving engine would have.
        unsafe { *s.pool.slot_ptr(off + 7) ^= 1 };
        assert_eq!(
            s.verify(),
            Err(SimError::Mismatch {
                side: Side::Slots,
                offset: 7
            })
        );
        // The failed unmap keeps the mapping, so the buffer stays valid.
        assert!(s.unmap(&0).is_err());
        assert_eq!(s.live_count(), 1);
        assert_eq!(s.stats().io_tlb_used, 1);
    }

    #[test]
    fn dropping_with_live_mappings_is_fine() {
        let mut s = Simulator::<Fast, u32>::new(64, PoolConfig::default()).unwrap();
        s.map(0, 100, BIDI).unwrap();
        s.map(1, 3000, Direction::FromDevice).unwrap();
        drop(s);
    }

    #[test]
    fn bad_pools_are_refused() {
        assert!(matches!(
            Simulator::<Fast, u32>::new(0, PoolConfig::default()),
            Err(Error::InvalidPool {
                problem: PoolProblem::TooSmall,
                ..
            })
        ));
        let cfg = PoolConfig {
            slot_shift: 99,
            ..PoolConfig::default()
        };
        assert!(matches!(
            Simulator::<Fast, u32>::new(1, cfg),
            Err(Error::InvalidPool {
                problem: PoolProblem::BadGeometry,
                ..
            })
        ));
    }

    #[test]
    fn errors_read_well() {
        let e = SimError::Mismatch {
            side: Side::Original,
            offset: 3,
        };
        assert!(e.to_string().contains("original buffer's bytes"));
        assert!(SimError::Engine(Error::ZeroSize)
            .to_string()
            .starts_with("swiotlb:"));
    }

    /// A size no segment can hold is refused before the original is
    /// allocated: a size no allocator could serve gets the engine's own
    /// answer, counted, rather than `NoMemory`.
    #[test]
    fn an_oversized_map_is_refused_before_allocating() {
        both(|new| {
            let mut s = new(64, tiny(1));
            let huge = isize::MAX as usize;
            let e = s.map_with(0, huge, BIDI, MapParams::default());
            let max = 8 * 512;
            assert_eq!(
                e.unwrap_err(),
                SimError::Engine(Error::TooLarge { size: huge, max })
            );
            let nvme = MapParams {
                min_align_mask: 0x3ff,
                ..MapParams::default()
            };
            let e = s.map_with(0, huge, BIDI, nvme);
            assert_eq!(
                e.unwrap_err(),
                SimError::Engine(Error::TooLarge {
                    size: huge,
                    max: max - 1024
                })
            );
            // The engine judges the alignment mask before the size.
            let odd = MapParams {
                alloc_align_mask: 0x5,
                ..MapParams::default()
            };
            let e = s.map_with(0, huge, BIDI, odd);
            assert!(matches!(
                e.unwrap_err(),
                SimError::Engine(Error::AlignmentImpossible {
                    align_mask: 0x5,
                    ..
                })
            ));
            assert_eq!(s.stats().failures(FailReason::TooLarge), 2);
            assert_eq!(s.stats().io_tlb_used, 0);
            // The id is still free.
            s.map_with(0, 100, BIDI, MapParams::default()).unwrap();
        });
    }

    /// The early refusal says exactly what the engine says for a real
    /// original of the same size, so it cannot drift from the engine.
    #[test]
    fn the_early_refusal_matches_the_engine() {
        for (size, min_align_mask, alloc_align_mask) in [
            (8 * 512 + 1, 0, 0),
            (8 * 512 + 1, 0x1ff, 0),
            (8 * 512 + 1, 0xfff, 0xff),
            (8 * 512 + 1, 0, 0x6),
            (10_000, 0x3ff, 0x7ff),
        ] {
            let mut sim = Simulator::<Fast, u32>::new(64, tiny(2)).unwrap();
            let params = MapParams {
                min_align_mask,
                alloc_align_mask,
                ..MapParams::default()
            };
            let early = sim.map_with(0, size, BIDI, params).unwrap_err();
            let dev = Device::new(DmaMask::BITS_64)
                .with_force_bounce()
                .with_min_align_mask(min_align_mask)
                .with_translate(sim.translate);
            let opts = MapOptions {
                alloc_align_mask,
                area_hint: None,
            };
            let mut buf = alloc::vec![0u8; size];
            // SAFETY:
            // - `buf` is valid for reads and writes of `size` bytes and
            //   outlives the call; the map fails, so nothing keeps it;
            // - nothing else touches it meanwhile.
            let engine = unsafe {
                sim.pool
                    .bounce_raw(&dev, PhysAddr(0), buf.as_mut_ptr(), size, Attrs::NONE, opts)
            };
            assert_eq!(early, SimError::Engine(engine.unwrap_err()), "{size}");
        }
    }

    /// A script on four areas whose areas peak at different times: maps
    /// from CPUs 0-3 of sizes that need 1-6 slots, each unmapped before
    /// its area's next map. `None` is an unmap of the id.
    const STAGGERED: &[(u32, Option<(usize, usize)>)] = &[
        (0, Some((0, 5000))),
        (1, Some((1, 3000))),
        (0, None),
        (2, Some((2, 9000))),
        (1, None),
        (3, Some((3, 2048))),
        (4, Some((0, 7000))),
        (2, None),
        (5, Some((1, 12000))),
        (3, None),
        (4, None),
        (6, Some((2, 4097))),
        (5, None),
        (7, Some((3, 10000))),
        (6, None),
        (7, None),
    ];

    /// `io_tlb_used_hiwater` is Linux's pool-wide mark whatever the number
    /// of areas: the most slots held at once over the script, counted here
    /// from the sizes alone (ceil(size / 2048) each), not the sum of the
    /// areas' own peaks, which is larger for this script.
    #[test]
    fn the_high_water_mark_is_pool_wide_on_several_areas() {
        both(|new| {
            let nareas = 4;
            // 256 slots an area: Linux keeps an area at least a segment.
            let mut s = new(1024, PoolConfig::with_areas(nareas));
            let area_nslabs = 1024 / nareas;
            let mut sizes = BTreeMap::new();
            let (mut used, mut peak) = (0, 0);
            let mut area_used = [0; 4];
            let mut area_peak = [0; 4];
            for &(id, op) in STAGGERED {
                match op {
                    Some((cpu, size)) => {
                        let p = MapParams {
                            cpu,
                            ..MapParams::default()
                        };
                        let (b, _) = s.map_with(id, size, BIDI, p).unwrap();
                        let n = size.div_ceil(2048) as u64;
                        assert_eq!(u64::from(b.nslots), n, "{id}");
                        let a = (b.slot / area_nslabs) as usize;
                        assert_eq!(a, cpu, "{id} lands in its CPU's area");
                        sizes.insert(id, (a, n));
                        used += n;
                        area_used[a] += n;
                        area_peak[a] = area_peak[a].max(area_used[a]);
                        peak = peak.max(used);
                    }
                    None => {
                        s.unmap(id).unwrap();
                        let (a, n) = sizes.remove(&id).unwrap();
                        used -= n;
                        area_used[a] -= n;
                    }
                }
                assert_eq!(s.stats().io_tlb_used, used);
                assert_eq!(s.stats().io_tlb_used_hiwater, peak);
            }
            // The script tells the two apart: 20 slots summed, 11 at once.
            assert_eq!((area_peak.iter().sum::<u64>(), peak), (20, 11));
            let st = s.stats();
            assert_eq!((st.io_tlb_used_hiwater, st.hiwater_exact), (11, true));
        });
    }

    #[test]
    fn patterns_differ() {
        let mut c = 0;
        let a = fresh(&mut c, 64).unwrap();
        let b = fresh(&mut c, 64).unwrap();
        assert_ne!(a, b);
        assert_eq!(fresh(&mut c, 13).unwrap().len(), 13);
        assert_eq!(first_difference(&[1, 2], &[1, 2, 3]), Some(2));
        assert_eq!(first_difference(&[1, 2], &[1, 2]), None);
    }
}
