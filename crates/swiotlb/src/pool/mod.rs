//! A bounce pool: one contiguous region of memory, its slots and areas.
//!
//! The pool owns the bookkeeping; an allocation [`Policy`] only searches.
//! Per slot the pool keeps:
//! - a *start* bit, set on the first slot of every live allocation, so that
//!   any device address inside a mapping finds its mapping by a backward
//!   bit scan (no per-slot back pointers to write on every map, as Linux
//!   writes `orig_addr` and `alloc_size` into every slot);
//! - at an allocation's first slot, the CPU address of the original buffer
//!   and the mapping's *shape* (length, offset of the bounce address from
//!   the allocation's start, slots held), one word each.
//!
//! Areas each have a lock and the policy's state, cache padded so that two
//! CPUs mapping in their own areas never share a cache line.
//!
//! All of it lives in one metadata block (`meta`): on the heap for
//! [`Pool::new`], in memory the caller lends for good for
//! [`Pool::new_with_metadata`], which needs no heap at all.

mod area;
mod bitmap;
mod coherent;
mod fast;
mod geometry;
#[cfg(feature = "checker")]
mod guard;
mod meta;
mod nextfit;
mod policy;
mod record;
mod request;

use core::mem::MaybeUninit;
use core::ptr::NonNull;

pub use coherent::Coherent;
pub use fast::Fast;
pub use geometry::PoolConfig;
#[cfg(feature = "checker")]
pub(crate) use guard::Scribble;
pub use nextfit::NextFit;
pub use policy::Policy;

// What a policy is made of: sealed with the trait, shown to this crate's
// own tests and benchmark only.
#[cfg(feature = "unstable-internals")]
pub use fast::FastArea;
#[cfg(feature = "unstable-internals")]
pub use meta::{AreaMemory, MetaArray, MetaCount, MetaSlice, MetaWord};
#[cfg(not(feature = "unstable-internals"))]
use meta::{AreaMemory, MetaSlice};
#[cfg(feature = "unstable-internals")]
pub use nextfit::NextFitArea;
#[cfg(feature = "unstable-internals")]
pub use policy::{AreaGeom, Request};

use crate::addr::PhysAddr;
use crate::error::{AllocWhat, ConfigProblem, Error, FailReason, Result};
#[cfg(feature = "alloc")]
use crate::stats::Stats;
use crate::sync::{AtomicPtr, AtomicU64, AtomicUsize, CachePadded, Mutex, Ordering};
use area::{Area, AreaState};
use geometry::{area_count, area_geom, geometry};
use meta::Carver;
use record::Shape;

/// How a pool keeps its high-water mark (see [`Pool::with_hiwater`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Hiwater {
    /// A mark per area, kept under the area lock each map takes anyway,
    /// reported as their sum: exact for one area, an upper bound otherwise.
    #[default]
    PerArea,
    /// Linux's one pool-wide counter, exact, shared by every CPU.
    Exact,
}

/// How a bounced mapping sits in its pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounce {
    /// The bounce address (CPU physical): where the mapping's first byte
    /// lives in the pool.
    pub phys: PhysAddr,
    /// The bounce address as the device sees it (the address to give it).
    pub dma: crate::addr::DmaAddr,
    /// Index of the slot holding the mapping's first byte (padding slots
    /// excluded).
    pub slot: u32,
    /// Index of the allocation's first slot (padding included).
    pub start: u32,
    /// Slots the allocation holds.
    pub nslots: u32,
}

/// One area as it is laid out in the metadata block.
type AreaSlot<P> = CachePadded<Area<<P as Policy>::Area>>;

/// Heap memory a pool owns: its slots ([`Pool::new_heap`]) or its metadata
/// block ([`Pool::new`]), freed when this is dropped.
///
/// # Invariants
/// `ptr` was allocated by the global allocator with `layout`, and nothing
/// else frees it.
#[cfg(feature = "alloc")]
struct Owned {
    ptr: NonNull<u8>,
    layout: core::alloc::Layout,
}

#[cfg(feature = "alloc")]
impl Owned {
    /// `layout.size()` zeroed bytes from the global allocator.
    ///
    /// # Errors
    /// `oom` if the size is zero or the allocation fails: a pool too large
    /// for the machine is an error, never an abort.
    fn zeroed(layout: core::alloc::Layout, oom: Error) -> Result<Self> {
        if layout.size() == 0 {
            return Err(oom);
        }
        // SAFETY: the layout has a non-zero size (checked just above).
        let raw = unsafe { alloc::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or(oom)?;
        // INVARIANT: just allocated with `layout`, by nobody else.
        Ok(Self { ptr, layout })
    }
}

#[cfg(feature = "alloc")]
impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: `ptr` was allocated with `layout` by the global allocator
        // and is freed once, here (type invariant); whoever owns this drops
        // it only after the last use of the memory.
        unsafe { alloc::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// A bounce pool over one region of memory.
///
/// Generic over its allocation [`Policy`]: [`Fast`] (the default) or
/// [`NextFit`] (Linux's). Build one over memory you provide with
/// [`Pool::new`] (a reserved region, an SRAM window, memory shared with a
/// device VM), with [`Pool::new_with_metadata`] where there is no heap yet
/// (firmware, early boot: the pool's bookkeeping goes in memory you lend
/// it too), or, for tests and simulations, over heap memory with
/// [`Pool::new_heap`].
///
/// # Device address 0
/// No pool ever hands out device address 0, to a bounce or to a coherent
/// allocation: many drivers and transports read 0 as a failed mapping
/// (virtio-drivers' `Hal`). A pool learns its device address only from
/// the device it serves (the device's translation of [`Pool::start`], at
/// each map), so the rule is applied there: for a device that sees the
/// pool's range `[start, start + len)` covering address 0 (starting at 0,
/// or running past the top of the bus onto it), every map and coherent
/// allocation fails with [`Error::DmaZeroInPool`], whatever its size,
/// before any slot is chosen. Refusing the pool whole rather than the one
/// slot at 0 keeps the allocation policies, and their agreement with
/// Linux's slot choices, untouched.
///
/// # Invariants
/// - `vaddr` is valid for reads and writes of `nslabs << slot_shift` bytes
///   for the pool's life, and the CPU touches it only through this pool;
/// - a slot belongs to at most one live allocation (the [`Policy`]
///   implementation-safety contract), and its bytes are accessed by the CPU
///   only on behalf of that allocation;
/// - `start_bits` has a bit set exactly at the first slot of each live
///   allocation, and `orig`/`shape` at that slot describe it;
/// - `areas`, `orig`, `shape` and `start_bits` (and the policy's arrays
///   inside the areas) live in one metadata block that outlives them: lent
///   for good, or owned by `meta_block`, which is declared last so that it
///   is dropped after them.
pub struct Pool<P: Policy = Fast> {
    vaddr: NonNull<u8>,
    start: PhysAddr,
    nslabs: u32,
    slot_shift: u32,
    segment: u32,
    page_shift: u32,
    area_nslabs: u32,
    areas: MetaSlice<AreaSlot<P>>,
    orig: MetaSlice<AtomicPtr<u8>>,
    shape: MetaSlice<AtomicU64>,
    start_bits: MetaSlice<AtomicU64>,
    /// Whether every word of `start_bits` covers slots of one area only
    /// (areas are whole multiples of 64 slots), so that the area lock alone
    /// guards writes to it.
    start_words_private: bool,
    /// Pool-wide slots held and their high-water mark, kept only when
    /// `exact_hiwater` (see [`Pool::with_hiwater`]).
    used: CachePadded<AtomicUsize>,
    hiwater: CachePadded<AtomicUsize>,
    exact_hiwater: bool,
    /// Whether freed slots are zeroed before they are free again
    /// ([`PoolConfig::zero_on_free`]).
    zero_on_free: bool,
    failures: [AtomicU64; FailReason::COUNT],
    direct: AtomicU64,
    /// The slots, for a pool over heap memory ([`Pool::new_heap`]).
    #[cfg(feature = "alloc")]
    owned: Option<Owned>,
    /// Releases running in the pool now, for the loom models only: a pool
    /// dropped while one runs is the use after free the grace rule of a
    /// growing tlb prevents (`IoTlb::guard_release`).
    #[cfg(swiotlb_loom)]
    releasing: AtomicUsize,
    /// The metadata block, for a pool that keeps it on the heap
    /// ([`Pool::new`]). Last: fields drop in declaration order, and the
    /// arrays above live in this block.
    #[cfg(feature = "alloc")]
    meta_block: Option<Owned>,
}

// SAFETY: the pool's raw pointer is to memory the pool manages (see the
// type's invariants); every access to slot bytes is made on behalf of the
// one allocation that holds the slot, and every shared field is an atomic
// or behind an area lock. Moving the pool to another thread moves only
// that bookkeeping.
unsafe impl<P: Policy> Send for Pool<P> {}
// SAFETY: as for `Send`: `&Pool` gives only atomic or lock-protected
// access to shared state, and slot bytes are reached only through
// allocations, which never share a slot.
unsafe impl<P: Policy> Sync for Pool<P> {}

impl<P: Policy> Drop for Pool<P> {
    fn drop(&mut self) {
        #[cfg(swiotlb_loom)]
        assert_eq!(
            self.releasing.load(Ordering::SeqCst),
            0,
            "a pool was freed while a release was still running in it"
        );
        // The fields drop after this, in order: the arrays in place, then
        // the heap memory (`owned`, `meta_block`), if any. No mapping can
        // outlive the pool: safe mappings borrow it.
        #[cfg(feature = "checker")]
        crate::checker::pool_gone(self.vaddr.as_ptr().addr(), self.start.0, self.len());
    }
}

impl<P: Policy> core::fmt::Debug for Pool<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pool")
            .field("policy", &P::NAME)
            .field("start", &self.start)
            .field("nslabs", &self.nslabs)
            .field("nareas", &self.areas.len())
            .finish()
    }
}

/// `n` zeroed words from `carver`. Outside loom a heap pool's block is
/// zeroed by the allocator (`calloc`, which for large sizes maps fresh
/// zero pages), so a pool's records cost no time until they are touched:
/// a 6 GiB pool has 3 million slots.
fn zeroed_words(carver: &mut Carver, n: usize) -> Option<MetaSlice<AtomicU64>> {
    #[cfg(not(swiotlb_loom))]
    {
        carver.zeroed(n)
    }
    #[cfg(swiotlb_loom)]
    {
        carver.filled(n, |_| AtomicU64::new(0))
    }
}

/// `n` null pointers, as [`zeroed_words`].
fn zeroed_ptrs(carver: &mut Carver, n: usize) -> Option<MetaSlice<AtomicPtr<u8>>> {
    #[cfg(not(swiotlb_loom))]
    {
        carver.zeroed(n)
    }
    #[cfg(swiotlb_loom)]
    {
        carver.filled(n, |_| AtomicPtr::new(core::ptr::null_mut()))
    }
}

impl<P: Policy> Pool<P> {
    /// The alignment a pool uses its metadata block from (that of its
    /// cache-padded areas). [`Pool::metadata_len`] counts the
    /// `METADATA_ALIGN - 1` bytes it may take to reach it from an
    /// arbitrary address; memory already aligned to it needs that much
    /// less.
    pub const METADATA_ALIGN: usize = core::mem::align_of::<AreaSlot<P>>();

    /// Bytes of metadata a pool of `len` bytes with `config` keeps,
    /// enough wherever they lie: what [`Pool::new_with_metadata`] must be
    /// given, and what [`Pool::new`] allocates.
    ///
    /// A `const fn`, so that firmware sizes a `static` at compile time:
    ///
    /// ```
    /// use core::mem::MaybeUninit;
    /// use swiotlb::{Fast, Pool, PoolConfig};
    ///
    /// const POOL_LEN: usize = 1 << 20;
    /// const META_LEN: usize = Pool::<Fast>::metadata_len(POOL_LEN, PoolConfig::DEFAULT);
    /// static mut META: [MaybeUninit<u8>; META_LEN] = [MaybeUninit::uninit(); META_LEN];
    /// # assert!(META_LEN < POOL_LEN / 64);
    /// ```
    ///
    /// It is the pool's records (16 bytes a slot and a start bit), the
    /// policy's arrays as [`Policy::METADATA`] declares them for each area
    /// ([`Fast`]: a bit a slot and 2 bytes a segment; [`NextFit`]: 4 bytes
    /// a slot), a cache-padded lock, counters and policy state per area,
    /// the alignment padding between them, and `METADATA_ALIGN - 1` bytes
    /// to align the block. 0 for a length or geometry that every
    /// constructor refuses ([`Error::InvalidPool`]); `usize::MAX` if the
    /// metadata would not fit the address space.
    pub const fn metadata_len(len: usize, config: PoolConfig) -> usize {
        if !config.is_valid() {
            return 0;
        }
        let Some(nslabs) = config.slot_count(len) else {
            return 0;
        };
        let nareas = area_count(config.nareas, nslabs, config.segment);
        match Self::carved_len(&config, nslabs, nareas) {
            Some(n) => n.saturating_add(Self::METADATA_ALIGN - 1),
            None => usize::MAX,
        }
    }

    /// Bytes of a metadata block from its aligned start to the end of its
    /// last array, `None` on overflow. The arrays in the order
    /// [`Pool::build`] carves them: the areas, the start bits, the
    /// originals, the shapes, then each area's policy arrays.
    const fn carved_len(config: &PoolConfig, nslabs: u32, nareas: u32) -> Option<usize> {
        let n = nslabs as usize;
        let mut at = meta::after::<AreaSlot<P>>(Some(0), nareas as usize);
        at = meta::after::<AtomicU64>(at, n.div_ceil(64));
        at = meta::after::<AtomicPtr<u8>>(at, n);
        at = meta::after::<AtomicU64>(at, n);
        let mut i = 0;
        while i < nareas {
            let geom = area_geom(config, nslabs, nareas, i);
            at = meta::after_declared(at, P::METADATA, &geom);
            i += 1;
        }
        at
    }

    /// A pool over `len` bytes at CPU address `vaddr`, physical address
    /// `phys`. This is the pool at a pre-defined address: a reserved
    /// region, an SRAM window, a region shared with a device or a device VM.
    /// Whole slots are used; a tail shorter than a slot is left alone. The
    /// pool's metadata ([`Pool::metadata_len`] bytes) is allocated on the
    /// heap; [`Pool::new_with_metadata`] takes memory for it instead.
    ///
    /// # Errors
    /// [`Error::InvalidPool`] if the region is smaller than a slot, `phys`
    /// is not slot aligned, the region wraps, or the geometry is out of
    /// range; [`Error::OutOfMemory`] if the pool's metadata cannot be
    /// allocated (it is allocated fallibly: never an abort).
    ///
    /// # Safety
    /// - `vaddr` is valid for reads and writes of `len` bytes until the pool
    ///   is dropped;
    /// - nothing else on the CPU side reads or writes those bytes while the
    ///   pool lives (devices may: that is the point);
    /// - `phys` is the physical address of `vaddr` and the region is
    ///   physically contiguous.
    #[cfg(feature = "alloc")]
    pub unsafe fn new(
        vaddr: NonNull<u8>,
        phys: PhysAddr,
        len: usize,
        config: PoolConfig,
    ) -> Result<Self> {
        // The region first: nothing is allocated for a pool that cannot be.
        geometry(phys, len, &config)?;
        let bytes = Self::metadata_len(len, config);
        let oom = Error::OutOfMemory {
            what: AllocWhat::Metadata,
            bytes,
        };
        // Aligned no more than the allocator aligns anyway, so that the
        // zeroed allocation is `calloc` (fresh zero pages for large sizes,
        // untouched until used) and not an aligned one zeroed by hand; the
        // block is aligned inside, within the bytes `metadata_len` counts
        // for it.
        let layout = core::alloc::Layout::from_size_align(bytes, 16).map_err(|_| oom)?;
        let block = Owned::zeroed(layout, oom)?;
        // SAFETY:
        // - `vaddr` is valid for reads and writes of `len` bytes until the
        //   pool is dropped, nothing else on the CPU side reaches them, and
        //   `phys` is their contiguous physical address: the caller
        //   guarantees each of these to this function, in the same words;
        // - `block.ptr` is valid for reads and writes of `bytes` bytes until
        //   `block` is dropped: by the pool, after its arrays (`meta_block`
        //   is its last field), or here, after `build` has dropped what it
        //   carved; nothing else reaches them, the allocation is fresh;
        // - they are all zero: `Owned::zeroed`.
        let mut pool = unsafe { Self::build(vaddr, phys, len, config, block.ptr, bytes, true) }?;
        pool.meta_block = Some(block);
        Ok(pool)
    }

    /// A pool over `len` bytes at CPU address `vaddr`, physical address
    /// `phys`, as [`Pool::new`], that keeps its metadata in `meta` rather
    /// than on the heap: for firmware and early boot, before there is a
    /// heap, and for builds without the `alloc` feature.
    ///
    /// `meta` must hold [`Pool::metadata_len`]`(len, config)` bytes, which
    /// is enough wherever it lies (memory aligned to
    /// [`Pool::METADATA_ALIGN`] needs `METADATA_ALIGN - 1` fewer). What it
    /// holds does not matter: the pool initialises what it uses. The pool
    /// keeps it for good, even when it refuses to be built; dropping the
    /// pool drops what was built there and leaves the memory unused.
    ///
    /// ```
    /// use core::mem::MaybeUninit;
    /// use core::ptr::{addr_of_mut, NonNull};
    /// use swiotlb::{Fast, PhysAddr, Pool, PoolConfig};
    ///
    /// const LEN: usize = 64 << 10;
    /// const META_LEN: usize = Pool::<Fast>::metadata_len(LEN, PoolConfig::DEFAULT);
    /// #[repr(align(4096))]
    /// struct Slots([u8; LEN]);
    /// static mut SLOTS: Slots = Slots([0; LEN]);
    /// static mut META: [MaybeUninit<u8>; META_LEN] = [MaybeUninit::uninit(); META_LEN];
    ///
    /// let vaddr = NonNull::new(addr_of_mut!(SLOTS).cast::<u8>()).unwrap();
    /// let phys = PhysAddr(vaddr.as_ptr().addr() as u64); // identity mapped
    /// let meta = addr_of_mut!(META);
    /// // SAFETY: the only reference ever made to `META`.
    /// let meta = unsafe { &mut *meta };
    /// // SAFETY: `SLOTS` is reached only through the pool from here on, and
    /// // lies at physical address `phys`.
    /// let pool: Pool<Fast> =
    ///     unsafe { Pool::new_with_metadata(vaddr, phys, LEN, PoolConfig::DEFAULT, meta) }.unwrap();
    /// assert_eq!(pool.nslabs(), 32);
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidPool`] as [`Pool::new`]; [`Error::BadConfig`] with
    /// [`ConfigProblem::MetadataTooSmall`] if `meta` is shorter than the
    /// pool needs, or [`ConfigProblem::MetadataMisaligned`] if it would be
    /// long enough only at an address aligned to
    /// [`Pool::METADATA_ALIGN`]. Nothing is allocated.
    ///
    /// # Safety
    /// - `vaddr` is valid for reads and writes of `len` bytes until the pool
    ///   is dropped;
    /// - nothing else on the CPU side reads or writes those bytes while the
    ///   pool lives (devices may: that is the point);
    /// - `phys` is the physical address of `vaddr` and the region is
    ///   physically contiguous.
    pub unsafe fn new_with_metadata(
        vaddr: NonNull<u8>,
        phys: PhysAddr,
        len: usize,
        config: PoolConfig,
        meta: &'static mut [MaybeUninit<u8>],
    ) -> Result<Self> {
        let given = meta.len();
        let block = NonNull::from(meta).cast::<u8>();
        // SAFETY:
        // - `vaddr` is valid for reads and writes of `len` bytes until the
        //   pool is dropped, nothing else on the CPU side reaches them, and
        //   `phys` is their contiguous physical address: the caller
        //   guarantees each of these to this function, in the same words;
        // - `block` is valid for reads and writes of `given` bytes for ever,
        //   and nothing else reaches them: it comes from a `&'static mut`,
        //   given up here;
        // - `zeroed` is false: nothing is assumed of what the bytes hold.
        unsafe { Self::build(vaddr, phys, len, config, block, given, false) }
    }

    /// Builds a pool over the `given` bytes of metadata block at `block`.
    ///
    /// # Errors
    /// As [`Pool::new_with_metadata`]; [`Error::OutOfMemory`] if the policy
    /// cannot build its state in the memory it declared.
    ///
    /// # Safety
    /// - `vaddr` is valid for reads and writes of `len` bytes until the pool
    ///   is dropped, nothing else on the CPU side reaches them meanwhile,
    ///   and `phys` is their physical address, contiguous;
    /// - `block` is valid for reads and writes of `given` bytes until the
    ///   pool's arrays are dropped (at the latest when the pool is), and
    ///   nothing else reaches them meanwhile;
    /// - if `zeroed`, those bytes are all zero.
    unsafe fn build(
        vaddr: NonNull<u8>,
        phys: PhysAddr,
        len: usize,
        config: PoolConfig,
        block: NonNull<u8>,
        given: usize,
        zeroed: bool,
    ) -> Result<Self> {
        let (nslabs, nareas) = geometry(phys, len, &config)?;
        let too_small = Error::BadConfig {
            problem: ConfigProblem::MetadataTooSmall {
                given,
                needed: Self::metadata_len(len, config),
            },
        };
        let carved = Self::carved_len(&config, nslabs, nareas).ok_or(too_small)?;
        let skip = block.as_ptr().addr().wrapping_neg() & (Self::METADATA_ALIGN - 1);
        if given < skip.saturating_add(carved) {
            return Err(if given >= carved {
                Error::BadConfig {
                    problem: ConfigProblem::MetadataMisaligned {
                        align: Self::METADATA_ALIGN,
                        skip,
                    },
                }
            } else {
                too_small
            });
        }
        // SAFETY: `skip + carved <= given` (checked just above), so the
        // result is inside the block.
        let base = unsafe { block.as_ptr().add(skip) };
        let base = NonNull::new(base).ok_or(too_small)?;
        // SAFETY:
        // - the block from `skip` on is valid for reads and writes of its
        //   `given - skip` bytes until the pool's arrays, all carved from
        //   it, are dropped, and nothing else reaches them (this
        //   function's second obligation);
        // - if `zeroed`, they are all zero (its third).
        let mut carver = unsafe { Carver::new(base, given - skip, zeroed) };
        let failed = Error::OutOfMemory {
            what: AllocWhat::Metadata,
            bytes: carved,
        };
        let mut areas = carver
            .filling::<AreaSlot<P>>(nareas as usize)
            .ok_or(failed)?;
        let start_bits = zeroed_words(&mut carver, (nslabs as usize).div_ceil(64)).ok_or(failed)?;
        let orig = zeroed_ptrs(&mut carver, nslabs as usize).ok_or(failed)?;
        let shape = zeroed_words(&mut carver, nslabs as usize).ok_or(failed)?;
        for i in 0..nareas {
            let geom = area_geom(&config, nslabs, nareas, i);
            let mut mem = AreaMemory::new(&mut carver, P::METADATA, geom);
            let policy = P::new_area(&geom, &mut mem).ok_or(failed)?;
            let area = CachePadded(Area {
                geom,
                state: Mutex::new(AreaState {
                    policy,
                    used: 0,
                    hiwater: 0,
                    mapped_to_device: 0,
                    unmapped_from_device: 0,
                }),
                bytes_to_device: AtomicU64::new(0),
                bytes_from_device: AtomicU64::new(0),
            });
            areas.push(area).map_err(|_| failed)?;
        }
        let areas = areas.finish().ok_or(failed)?;
        debug_assert_eq!(
            carver.used(),
            carved,
            "metadata_len disagrees with the carving"
        );
        let area_nslabs = nslabs / nareas;
        Ok(Self {
            vaddr,
            start: phys,
            nslabs,
            slot_shift: config.slot_shift,
            segment: config.segment,
            page_shift: config.page_shift,
            area_nslabs,
            areas,
            orig,
            shape,
            start_bits,
            start_words_private: area_nslabs % 64 == 0,
            used: CachePadded(AtomicUsize::new(0)),
            hiwater: CachePadded(AtomicUsize::new(0)),
            exact_hiwater: false,
            zero_on_free: config.zero_on_free,
            failures: core::array::from_fn(|_| AtomicU64::new(0)),
            direct: AtomicU64::new(0),
            #[cfg(feature = "alloc")]
            owned: None,
            #[cfg(swiotlb_loom)]
            releasing: AtomicUsize::new(0),
            #[cfg(feature = "alloc")]
            meta_block: None,
        })
    }

    /// A pool over `len` bytes of zeroed heap memory, aligned to the
    /// pool's page size (or its segment, if smaller) and slot, whose
    /// "physical" address is its CPU address (identity): for tests,
    /// simulations and user-space stacks where the device side is another
    /// thread or process that sees the same addresses.
    ///
    /// # Errors
    /// As [`Pool::new`]; also [`Error::OutOfMemory`] if the pool's memory
    /// cannot be allocated.
    #[cfg(feature = "alloc")]
    pub fn new_heap(len: usize, config: PoolConfig) -> Result<Self> {
        let oom = Error::OutOfMemory {
            what: AllocWhat::PoolMemory,
            bytes: len,
        };
        // Aligned to the pool's own page (up to a segment) and slot, so
        // that a segment can start page aligned: mappings of a page or
        // more must be, and `max_mapping_size` promises that an empty pool
        // takes a whole segment's worth. Without asking the allocator for
        // the alignment: an aligned zeroed allocation is zeroed by hand,
        // touching every page, while a plain one is `calloc`, which maps
        // fresh zero pages for large sizes. So over-allocate and align
        // inside.
        let segment_shift = config
            .slot_shift
            .saturating_add(config.segment.trailing_zeros());
        // At least a slot and 4 KiB, at most 1 GiB (the geometry is
        // checked by `new`; this must not panic before it is).
        let floor = config.slot_shift.clamp(12, 30);
        let align_shift = config.page_shift.min(segment_shift).clamp(floor, 30);
        let align = 1usize << align_shift;
        let layout = core::alloc::Layout::from_size_align(len.max(1).saturating_add(align), 16)
            .map_err(|_| oom)?;
        let owned = Owned::zeroed(layout, oom)?;
        let base = owned.ptr;
        let skip = base.as_ptr().align_offset(align);
        // SAFETY: `skip < align`, and the allocation is `len + align` bytes,
        // so `base + skip` and the `len` bytes after it are inside it.
        let inside = unsafe { base.as_ptr().add(skip) };
        // SAFETY: `inside` is `base`, non-null, moved forward inside its
        // allocation, so it is non-null too.
        let ptr = unsafe { NonNull::new_unchecked(inside) };
        let phys = PhysAddr(ptr.as_ptr() as usize as u64);
        // SAFETY:
        // - `ptr` is valid for reads and writes of `len` bytes: inside the
        //   allocation just made, freed only when `owned` drops, which the
        //   pool does when it drops (or this function, if `new` fails);
        // - nothing else has the pointer;
        // - identity: the physical address is defined as the CPU address.
        let mut pool = unsafe { Self::new(ptr, phys, len, config) }?;
        pool.owned = Some(owned);
        Ok(pool)
    }

    /// The physical address of the pool's first slot.
    pub fn start(&self) -> PhysAddr {
        self.start
    }

    /// The CPU address of the pool's first slot.
    pub fn vaddr(&self) -> NonNull<u8> {
        self.vaddr
    }

    /// The pool's size in bytes (whole slots).
    pub fn len(&self) -> usize {
        (self.nslabs as usize) << self.slot_shift
    }

    /// Always `false`: a pool holds at least one slot.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Slots in the pool (Linux `io_tlb_nslabs`).
    pub fn nslabs(&self) -> u32 {
        self.nslabs
    }

    /// Areas in the pool.
    pub fn nareas(&self) -> u32 {
        self.areas.len() as u32
    }

    /// Slots per area (the last area also takes any remainder).
    pub fn area_nslabs(&self) -> u32 {
        self.area_nslabs
    }

    /// The slot size in bytes.
    pub fn slot_size(&self) -> usize {
        1 << self.slot_shift
    }

    /// Slots per segment.
    pub fn segment(&self) -> u32 {
        self.segment
    }

    /// Whether the pool zeroes every slot of a mapping or coherent
    /// allocation when it is unmapped or freed
    /// ([`PoolConfig::zero_on_free`]).
    pub fn zeroes_on_free(&self) -> bool {
        self.zero_on_free
    }

    /// Zeroes the `nslots` slots from slot `start`, all of an allocation
    /// being released: called under its area's lock, after the release
    /// cleared the allocation's start bit and before the policy frees its
    /// slots, so that no one else holds them or can take them meanwhile.
    /// `start + nslots` is at most the pool's slot count: the slots of a
    /// live allocation, as its record (or the safe mapping that owns it)
    /// gives them.
    #[inline]
    pub(crate) fn scrub(&self, start: u32, nslots: u32) {
        let end = (start as usize) + (nslots as usize);
        assert!(end <= self.nslabs as usize, "scrub past the pool");
        let off = self.slot_offset(start);
        let len = (nslots as usize) << self.slot_shift;
        // SAFETY:
        // - `[off, off + len)` is slots `start..start + nslots`, inside the
        //   pool (asserted just above), whose memory is valid for writes
        //   for the pool's life (type invariant on `vaddr`);
        // - the slots belong to the allocation being released and to no
        //   other (the `Policy` contract): its release holds the area lock
        //   and has not yet given them to the policy, so no allocation can
        //   take them until this write is done; the CPU writes them on that
        //   allocation's behalf, and no Rust reference to slot memory
        //   exists (the pool only reaches it through raw pointers);
        // - the device is done with the allocation (the unmap's or free's
        //   contract, or the safe mapping's end of life).
        unsafe { core::ptr::write_bytes(self.slot_ptr(off), 0, len) };
    }

    /// The name of the allocation policy.
    pub fn policy_name(&self) -> &'static str {
        P::NAME
    }

    /// Whether `phys` lies inside the pool.
    #[inline]
    pub fn contains(&self, phys: PhysAddr) -> bool {
        phys.0
            .checked_sub(self.start.0)
            .is_some_and(|off| off < self.len() as u64)
    }

    /// The largest mapping a device with this `min_align_mask` can have
    /// (Linux `swiotlb_max_mapping_size`: a segment less the
    /// `min_align_mask` rounded up to a slot), further capped by the
    /// smallest area, which matters only for pools smaller than a segment.
    ///
    /// A promise: an empty pool accepts a mapping of this size from any
    /// original, for a device with this mask and no other alignment
    /// constraint, whenever the pool's device address is aligned to its
    /// page size (or its segment, if smaller), as [`Pool::new_heap`]'s
    /// always is (mappings of a page or more are page aligned).
    pub fn max_mapping_size(&self, min_align_mask: u64) -> usize {
        let slot_mask = (1u64 << self.slot_shift) - 1;
        // roundup(min_align_mask, slot): masks are `2^n - 1`, so this is an
        // add and a mask, no division on the map path.
        let round = min_align_mask.saturating_add(slot_mask) & !slot_mask;
        // The smallest area is `area_nslabs` (the last one may be larger).
        let seg = (self.segment.min(self.area_nslabs) as u64) << self.slot_shift;
        seg.saturating_sub(round) as usize
    }

    /// Bytes in the largest allocation: a segment, or the smallest area if
    /// that is smaller.
    fn segment_bytes(&self) -> usize {
        (self.segment.min(self.area_nslabs) as usize) << self.slot_shift
    }

    /// Metadata bytes the pool keeps, all areas included (not the slot
    /// memory itself, nor the alignment padding of the metadata block that
    /// [`Pool::metadata_len`] counts).
    pub fn metadata_bytes(&self) -> usize {
        let per_slot = core::mem::size_of::<AtomicPtr<u8>>() + core::mem::size_of::<AtomicU64>();
        let bits = self.start_bits.len() * 8;
        let areas: usize = self
            .areas
            .iter()
            .map(|a| {
                let arrays: usize = P::METADATA.iter().map(|m| m.bytes(&a.geom)).sum();
                arrays + core::mem::size_of_val(&**a)
            })
            .sum();
        self.nslabs as usize * per_slot + bits + areas + core::mem::size_of::<Self>()
    }

    /// The CPU address of byte `off` of the pool, with the pool's
    /// provenance. Computing it is safe for any `off` (a wrapping offset);
    /// it points into the pool only for `off < len()`, which every caller
    /// that reads or writes through it argues at its own `unsafe` block.
    #[inline]
    pub(crate) fn slot_ptr(&self, off: usize) -> *mut u8 {
        self.vaddr.as_ptr().wrapping_add(off)
    }

    /// log2 of the slot size.
    #[inline]
    pub(crate) fn slot_shift(&self) -> u32 {
        self.slot_shift
    }

    /// Byte offset in the pool of slot `slot`.
    #[inline]
    pub(crate) fn slot_offset(&self, slot: u32) -> usize {
        (slot as usize) << self.slot_shift
    }

    /// Counts a failure under its reason.
    pub(crate) fn count_failure(&self, e: &Error) {
        self.failures[e.reason() as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts bytes a sync bounced for the allocation at `start` (map and
    /// unmap copies are counted under the area lock instead).
    #[inline]
    pub(crate) fn count_bytes(&self, start: u32, to_device: bool, n: usize) {
        let area = self.area_of(start);
        let c = if to_device {
            &area.bytes_to_device
        } else {
            &area.bytes_from_device
        };
        c.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts a mapping the device reached directly.
    #[inline]
    pub(crate) fn count_direct(&self) {
        self.direct.fetch_add(1, Ordering::Relaxed);
    }

    /// The pool's statistics, named like Linux's debugfs files.
    #[cfg(feature = "alloc")]
    pub fn stats(&self) -> Stats {
        let mut area_used = alloc::vec::Vec::with_capacity(self.areas.len());
        let mut to = 0;
        let mut from = 0;
        let mut area_marks = 0;
        for a in self.areas.iter() {
            let st = a.state.lock();
            area_used.push(st.used as u64);
            area_marks += st.hiwater as u64;
            to += st.mapped_to_device + a.bytes_to_device.load(Ordering::Relaxed);
            from += st.unmapped_from_device + a.bytes_from_device.load(Ordering::Relaxed);
        }
        let mut failures = [0; FailReason::COUNT];
        for (f, c) in failures.iter_mut().zip(&self.failures) {
            *f = c.load(Ordering::Relaxed);
        }
        Stats {
            io_tlb_nslabs: self.nslabs as u64,
            io_tlb_used: area_used.iter().sum(),
            io_tlb_used_hiwater: if self.exact_hiwater {
                self.hiwater.load(Ordering::Relaxed) as u64
            } else {
                area_marks
            },
            hiwater_exact: self.exact_hiwater || self.areas.len() == 1,
            area_used,
            failures,
            bytes_to_device: to,
            bytes_from_device: from,
            direct_maps: self.direct.load(Ordering::Relaxed),
        }
    }

    /// Slots held by live allocations now (the pool-wide count behind
    /// `io_tlb_used`): one atomic load with an exact high-water mark, else
    /// a sum over the areas under their locks.
    pub fn used_slots(&self) -> usize {
        if self.exact_hiwater {
            self.used.load(Ordering::Relaxed)
        } else {
            self.areas
                .iter()
                .map(|a| a.state.lock().used as usize)
                .sum()
        }
    }

    /// Whether the pool keeps an exact pool-wide `io_tlb_used_hiwater`
    /// across its areas, as Linux does when it has debugfs: one counter
    /// shared by every CPU, added to on every map and subtracted from on
    /// every unmap. The default (`false`) keeps a mark per area instead,
    /// under the lock each map takes anyway, and reports their sum: exact
    /// for a pool of one area (the default geometry), an upper bound
    /// otherwise, so a pool sized from it is never too small. A pool has
    /// several areas to let CPUs map at once, and the shared counter
    /// undoes that: in `swiotlb bench` two threads mapping 64 B or 4 KiB
    /// reach about twice one thread's throughput without it and fall below
    /// one thread's with it (rows `throughput` and
    /// `throughput_exact_hiwater`, docs/PERFORMANCE.md). Set it before the
    /// pool is shared.
    pub fn with_hiwater(mut self, mark: Hiwater) -> Self {
        let exact = mark == Hiwater::Exact;
        if self.exact_hiwater && !exact {
            // The per-area marks were kept all along.
        } else if !self.exact_hiwater && exact {
            self.used.store(self.used_slots(), Ordering::Relaxed);
            self.hiwater
                .store(self.used.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.exact_hiwater = exact;
        self
    }

    /// Resets `io_tlb_used_hiwater` to the current use (Linux: writing 0 to
    /// the debugfs file).
    pub fn reset_hiwater(&self) {
        for a in self.areas.iter() {
            let mut st = a.state.lock();
            st.hiwater = st.used;
        }
        self.hiwater
            .store(self.used.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    #[cfg(feature = "unstable-internals")]
    /// Whether pool slot `slot` is free, as the policy sees it (for shadow
    /// checks in tests).
    pub fn slot_is_free(&self, slot: u32) -> bool {
        let area = self.area_of(slot);
        let st = area.state.lock();
        P::is_free(&st.policy, &area.geom, slot)
    }

    #[cfg(feature = "unstable-internals")]
    /// Runs `f` on the policy state of area `i` under its lock (for golden
    /// tests that inspect Linux's rotating index).
    pub fn with_area<R>(&self, i: usize, f: impl FnOnce(&P::Area, &AreaGeom) -> R) -> R {
        let area = &self.areas[i];
        let st = area.state.lock();
        f(&st.policy, &area.geom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::PoolProblem;

    #[test]
    #[cfg(feature = "alloc")]
    // Miri reports a huge allocation as resource exhaustion instead of
    // returning null.
    #[cfg_attr(miri, ignore)]
    fn metadata_that_cannot_be_allocated_is_an_error_not_an_abort() {
        use core::alloc::Layout;
        let oom = Error::OutOfMemory {
            what: AllocWhat::Metadata,
            bytes: 1 << 50,
        };
        // More memory than the machine has.
        let huge = Layout::from_size_align(1 << 50, 16).unwrap();
        assert_eq!(Owned::zeroed(huge, oom).err(), Some(oom));
        // Nothing to allocate is refused, not undefined.
        let empty = Layout::from_size_align(0, 16).unwrap();
        assert_eq!(Owned::zeroed(empty, oom).err(), Some(oom));
        let small = Owned::zeroed(Layout::from_size_align(24, 16).unwrap(), oom).unwrap();
        // SAFETY: `small` owns 24 zeroed bytes, read here as bytes.
        let bytes = unsafe { core::slice::from_raw_parts(small.ptr.as_ptr(), 24) };
        assert!(bytes.iter().all(|&b| b == 0));
    }

    /// The layout `metadata_len` states is the carving's, for pools of
    /// one to eight areas, areas off segment lines, and a remainder.
    #[test]
    #[cfg(feature = "alloc")]
    fn metadata_len_is_the_carved_length_and_the_alignment() {
        fn check<P: Policy>() {
            for (nslabs, segment, wanted) in
                [(1, 128, 1), (300, 128, 2), (1030, 128, 8), (777, 32, 3)]
            {
                let config = PoolConfig {
                    segment,
                    nareas: wanted,
                    ..PoolConfig::DEFAULT
                };
                let len = (nslabs as usize) << config.slot_shift;
                let nareas = area_count(wanted, nslabs, segment);
                let carved = Pool::<P>::carved_len(&config, nslabs, nareas).unwrap();
                let want = carved + Pool::<P>::METADATA_ALIGN - 1;
                assert_eq!(Pool::<P>::metadata_len(len, config), want);
                // `new` allocates that, and the carving checks it takes
                // exactly `carved` (a debug assertion in `build`).
                let pool = Pool::<P>::new_heap(len, config).unwrap();
                assert_eq!(pool.nareas(), nareas);
            }
            let config = PoolConfig::DEFAULT;
            assert_eq!(Pool::<P>::metadata_len(100, config), 0, "less than a slot");
            let bad = PoolConfig {
                segment: 3,
                ..config
            };
            assert_eq!(Pool::<P>::metadata_len(1 << 20, bad), 0, "bad geometry");
        }
        check::<Fast>();
        check::<NextFit>();
    }

    #[test]
    fn area_counts_follow_linux() {
        assert_eq!(area_count(1, 32768, 128), 1);
        assert_eq!(area_count(3, 32768, 128), 4);
        assert_eq!(area_count(8, 256, 128), 2);
        assert_eq!(area_count(4, 100, 128), 1);
        assert_eq!(area_count(0, 1024, 128), 1);
    }

    #[test]
    fn shape_round_trips() {
        let s = Shape::new(1 << 23, (1 << 23) - 1, 1 << 15);
        assert_eq!(s.len(), 1 << 23);
        assert_eq!(s.pad(), (1 << 23) - 1);
        assert_eq!(s.nslots(), 1 << 15);
    }

    #[test]
    fn rejects_bad_regions() {
        let mut mem = alloc::vec![0u8; 8192];
        let p = NonNull::new(mem.as_mut_ptr()).unwrap();
        // SAFETY: `mem` outlives the attempts, which fail before use.
        let r = unsafe { Pool::<Fast>::new(p, PhysAddr(0x1001), 8192, PoolConfig::default()) };
        assert!(matches!(
            r,
            Err(Error::InvalidPool {
                problem: PoolProblem::Unaligned,
                ..
            })
        ));
        // SAFETY: `p` points at memory valid for its whole length that
        // nothing else touches; the call fails before using it.
        let r = unsafe { Pool::<Fast>::new(p, PhysAddr(0x1000), 100, PoolConfig::default()) };
        assert!(matches!(
            r,
            Err(Error::InvalidPool {
                problem: PoolProblem::TooSmall,
                ..
            })
        ));
        let cfg = PoolConfig {
            segment: 3,
            ..PoolConfig::default()
        };
        // SAFETY: `p` points at memory valid for its whole length that
        // nothing else touches; the call fails before using it.
        let r = unsafe { Pool::<Fast>::new(p, PhysAddr(0x1000), 8192, cfg) };
        assert!(matches!(
            r,
            Err(Error::InvalidPool {
                problem: PoolProblem::BadGeometry,
                ..
            })
        ));
    }
}
