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

mod bitmap;
mod fast;
mod meta;
mod nextfit;
mod policy;

use core::mem::MaybeUninit;
use core::ptr::NonNull;

pub use fast::Fast;
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
#[cfg(not(feature = "unstable-internals"))]
use policy::{AreaGeom, Request};

use crate::addr::{DmaAddr, PhysAddr};
use crate::device::Device;
use crate::error::{AllocWhat, ConfigProblem, Error, FailReason, PoolProblem, Result};
#[cfg(feature = "alloc")]
use crate::stats::Stats;
use crate::sync::{AtomicPtr, AtomicU64, AtomicUsize, CachePadded, Mutex, Ordering};
use crate::translate::Translate;
use meta::Carver;

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

/// Runtime geometry of a pool.
///
/// The defaults are Linux's: 2 KiB slots (`IO_TLB_SHIFT` 11), 128-slot
/// segments (`IO_TLB_SEGSIZE`, so one mapping is at most 256 KiB), 4 KiB
/// pages, one area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// log2 of the slot size, `9..=16`. Smaller slots waste less on small
    /// mappings and cost more metadata per byte of pool.
    pub slot_shift: u32,
    /// Slots per segment, a power of two; a mapping never crosses a segment
    /// line, so `slot size * segment` is the largest mapping. At most
    /// 32768 slots and 8 MiB.
    pub segment: u32,
    /// Areas wanted: rounded up to a power of two, then halved until each
    /// area holds at least one segment (Linux `limit_nareas`). One area per
    /// CPU spreads lock contention.
    pub nareas: u32,
    /// log2 of the page size: mappings of a page or more start page aligned
    /// when no mask says otherwise.
    pub page_shift: u32,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl PoolConfig {
    /// The default geometry, for `const` contexts (a heapless pool's
    /// metadata size, [`Pool::metadata_len`]).
    pub const DEFAULT: Self = Self {
        slot_shift: crate::config::IO_TLB_SHIFT,
        segment: crate::config::IO_TLB_SEGSIZE,
        nareas: 1,
        page_shift: 12,
    };

    /// The default geometry with `nareas` areas.
    pub const fn with_areas(nareas: u32) -> Self {
        Self {
            nareas,
            ..Self::DEFAULT
        }
    }

    /// Whether every field is in range.
    const fn is_valid(&self) -> bool {
        self.slot_shift >= 9
            && self.slot_shift <= 16
            && self.segment.is_power_of_two()
            && self.segment <= 1 << 15
            && (self.segment as u64) << self.slot_shift <= 1 << 23
            && self.page_shift >= 9
            && self.page_shift <= 30
    }

    fn check(&self) -> core::result::Result<(), PoolProblem> {
        if self.is_valid() {
            Ok(())
        } else {
            Err(PoolProblem::BadGeometry)
        }
    }

    /// The pool's slot count for `len` bytes, `None` if it is zero or more
    /// than the records can index. The geometry must be valid.
    const fn slot_count(&self, len: usize) -> Option<u32> {
        let n = (len as u64) >> self.slot_shift;
        if n == 0 || n >= (u32::MAX - 64) as u64 {
            None
        } else {
            Some(n as u32)
        }
    }
}

/// Where area `i` of a pool of `nslabs` slots in `nareas` areas lies: each
/// area has `nslabs / nareas` slots, and the last one also takes the
/// remainder, so no slot is lost (Linux leaves it unused).
const fn area_geom(config: &PoolConfig, nslabs: u32, nareas: u32, i: u32) -> AreaGeom {
    let area_nslabs = nslabs / nareas;
    let first = i * area_nslabs;
    AreaGeom {
        first,
        nslabs: if i == nareas - 1 {
            nslabs - first
        } else {
            area_nslabs
        },
        segment: config.segment,
        slot_shift: config.slot_shift,
    }
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

/// A live mapping found from an address inside it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Located {
    /// First slot of the allocation.
    pub start: u32,
    /// CPU address of the original buffer's first byte.
    pub orig: *mut u8,
    /// Bytes of the mapping.
    pub len: usize,
    /// Bytes from the allocation's start to the bounce address.
    pub pad: usize,
    /// Slots held.
    pub nslots: u32,
    /// Byte offset of the looked-up address from the bounce address
    /// (negative inside the padding).
    pub offset: i64,
}

/// The packed shape of a mapping: length (24 bits), padding (24 bits),
/// slots (16 bits). `PoolConfig::check` keeps every field in range: a
/// mapping is at most 8 MiB and a segment at most 32768 slots.
#[derive(Clone, Copy)]
struct Shape(u64);

impl Shape {
    const fn new(len: usize, pad: usize, nslots: u32) -> Self {
        Shape(len as u64 | (pad as u64) << 24 | (nslots as u64) << 48)
    }
    const fn len(self) -> usize {
        (self.0 & 0xff_ffff) as usize
    }
    const fn pad(self) -> usize {
        (self.0 >> 24 & 0xff_ffff) as usize
    }
    const fn nslots(self) -> u32 {
        (self.0 >> 48) as u32
    }
}

struct AreaState<A> {
    policy: A,
    used: u32,
    /// The most slots this area held at once since the last reset.
    hiwater: u32,
    /// Bytes copied in at map time and back at unmap, counted under the
    /// lock the map and unmap take anyway (syncs use the area's atomics).
    mapped_to_device: u64,
    unmapped_from_device: u64,
}

struct Area<A> {
    geom: AreaGeom,
    state: Mutex<AreaState<A>>,
    bytes_to_device: AtomicU64,
    bytes_from_device: AtomicU64,
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
    failures: [AtomicU64; FailReason::COUNT],
    direct: AtomicU64,
    /// The slots, for a pool over heap memory ([`Pool::new_heap`]).
    #[cfg(feature = "alloc")]
    owned: Option<Owned>,
    /// Releases running in the pool now, for the loom models only: a pool
    /// dropped while one runs is the use after free the grace rule of a
    /// growing tlb prevents (`AfterRelease::guard_release`).
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

/// The region checks of every constructor: the pool's slot count and area
/// count for `len` bytes at `phys`.
fn geometry(phys: PhysAddr, len: usize, config: &PoolConfig) -> Result<(u32, u32)> {
    let bad = |problem| Error::InvalidPool {
        base: phys,
        problem,
    };
    config.check().map_err(bad)?;
    let slot = 1u64 << config.slot_shift;
    if phys.0 & (slot - 1) != 0 {
        return Err(bad(PoolProblem::Unaligned));
    }
    if phys.0.checked_add(len as u64).is_none() {
        return Err(bad(PoolProblem::Wraps));
    }
    if (len as u64) >> config.slot_shift == 0 {
        return Err(bad(PoolProblem::TooSmall));
    }
    let nslabs = config
        .slot_count(len)
        .ok_or(bad(PoolProblem::TooManySlots))?;
    Ok((nslabs, area_count(config.nareas, nslabs, config.segment)))
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

    /// Builds the slot request for a bounce of `size` bytes of the original
    /// at `orig`, as Linux's `swiotlb_tbl_map_single` and
    /// `swiotlb_search_pool_area` normalise it. Returns the request and the
    /// offset of the bounce address from the allocation's first slot.
    pub(crate) fn request<T: Translate>(
        &self,
        dev: &Device<T>,
        orig: u64,
        size: usize,
        alloc_align_mask: u64,
    ) -> Result<(Request, usize)> {
        let tbl_dma = dev.phys_to_dma(self.start).0;
        let boundary_mask = dev.seg_boundary_mask();
        let min_align_mask = dev.min_align_mask();
        let shift = self.slot_shift;
        let slot_mask = (1u64 << shift) - 1;
        let impossible = Error::AlignmentImpossible {
            align_mask: alloc_align_mask,
            min_align_mask,
        };
        if alloc_align_mask & alloc_align_mask.wrapping_add(1) != 0 {
            return Err(impossible);
        }
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        // Like Linux, `max_mapping_size` is the size every request up to it
        // can get, not a cap: a larger mapping whose actual offset leaves
        // room in a segment is served (`swiotlb_tbl_map_single` enforces
        // nothing more). Only a request no segment can hold is too large.
        if size > self.segment_bytes() {
            return Err(Error::TooLarge {
                size,
                max: self.max_mapping_size(min_align_mask),
            });
        }
        // swiotlb_align_offset(dev, alloc_align_mask, orig): the bits of
        // the original the bounce address keeps, padding slots included.
        let offset = orig & min_align_mask & (alloc_align_mask | slot_mask);
        // ALIGN(mapping_size + offset, alloc_align_mask + 1), then slots;
        // the mask is `2^n - 1` (checked above), so shifts and masks do it.
        let total = (size as u64 + offset)
            .checked_add(alloc_align_mask)
            .ok_or(impossible)?
            & !alloc_align_mask;
        let nslots = (total + slot_mask) >> shift;
        let limit = self.segment.min(self.area_nslabs) as u64;
        if nslots > limit {
            let max = self.max_mapping_size(min_align_mask);
            if size > max {
                return Err(Error::TooLarge { size, max });
            }
            // The size fits; the alignment padding does not.
            return Err(Error::PaddingTooLarge {
                size,
                padded: total,
                align_mask: alloc_align_mask,
                segment: self.segment_bytes(),
            });
        }
        // Historically mappings of a page or more are page aligned when no
        // mask says otherwise; drivers rely on it.
        let mut align = alloc_align_mask;
        let page = 1u64 << self.page_shift;
        if align == 0 && min_align_mask == 0 && total >= page {
            align = page - 1;
        }
        align |= slot_mask;
        let iotlb = min_align_mask & !align;
        let stride = ((align.max(iotlb) >> shift) + 1).min(1 << 31) as u32;
        let boundary_slots = (boundary_mask >> shift) + 1;
        if nslots > boundary_slots {
            return Err(impossible);
        }
        // Linux tests every slot's device address against the alignment
        // mask, which always holds the slot mask: a table whose device
        // address is not slot aligned (an odd bus offset) has no
        // acceptable slot at all.
        if tbl_dma & boundary_mask & slot_mask != 0 {
            return Err(impossible);
        }
        let req = Request {
            nslots: nslots as u32,
            align_mask: align,
            iotlb_mask: iotlb,
            orig,
            tbl_dma: tbl_dma & boundary_mask,
            // Linux `nr_slots(tbl_dma_addr)`: DIV_ROUND_UP in unsigned
            // arithmetic, which wraps for a table in the last slot of the
            // device address space.
            tbl_slot: (tbl_dma & boundary_mask).wrapping_add(slot_mask) >> shift,
            boundary_slots,
            stride,
        };
        Ok((req, offset as usize))
    }

    /// Finds slots for `req`, starting in area `hint % nareas` and falling
    /// back to the others in turn (Linux `swiotlb_find_slots`), and records
    /// the mapping at the allocation's first slot.
    pub(crate) fn alloc(
        &self,
        req: &Request,
        hint: usize,
        orig: *mut u8,
        len: usize,
        pad: usize,
    ) -> Option<u32> {
        // A streaming map copies `len` bytes in right after this.
        self.alloc_counted(req, hint, orig, len, pad, len)
    }

    /// [`Pool::alloc`], counting `copied` bytes as bounced to the device
    /// (`len` for a streaming map, 0 for a coherent allocation, which is
    /// never copied).
    fn alloc_counted(
        &self,
        req: &Request,
        hint: usize,
        orig: *mut u8,
        len: usize,
        pad: usize,
        copied: usize,
    ) -> Option<u32> {
        let s = self.in_areas(hint, req.nslots, |geom, st| {
            let s = P::alloc(&mut st.policy, geom, req)?;
            st.used += req.nslots;
            st.hiwater = st.hiwater.max(st.used);
            st.mapped_to_device += copied as u64;
            // INVARIANT: the record is written before the start bit that
            // publishes it (Release), under the area lock.
            self.orig[s as usize].store(orig, Ordering::Relaxed);
            self.shape[s as usize].store(Shape::new(len, pad, req.nslots).0, Ordering::Relaxed);
            self.set_start_bit(s);
            Some(s)
        })?;
        if self.exact_hiwater {
            let used =
                self.used.fetch_add(req.nslots as usize, Ordering::Relaxed) + req.nslots as usize;
            // Read before writing: once warm, the high-water mark rarely
            // moves, and a plain load keeps its cache line shared between
            // CPUs instead of bouncing it.
            if used > self.hiwater.load(Ordering::Relaxed) {
                self.hiwater.fetch_max(used, Ordering::Relaxed);
            }
        }
        Some(s)
    }

    /// Runs `f` under each area's lock in turn, from area `hint % nareas`
    /// on, skipping areas with fewer than `nslots` free slots, until it
    /// gives `Some` (Linux `swiotlb_find_slots` walking the areas).
    #[inline(always)]
    fn in_areas<R>(
        &self,
        hint: usize,
        nslots: u32,
        mut f: impl FnMut(&AreaGeom, &mut AreaState<P::Area>) -> Option<R>,
    ) -> Option<R> {
        let nareas = self.areas.len();
        let first = hint & (nareas - 1);
        let mut i = first;
        loop {
            let area = &self.areas[i];
            let mut st = area.state.lock();
            if nslots <= area.geom.nslabs - st.used {
                if let Some(r) = f(&area.geom, &mut st) {
                    return Some(r);
                }
            }
            drop(st);
            i = (i + 1) & (nareas - 1);
            if i == first {
                return None;
            }
        }
    }

    /// Why `req` failed: full, or impossible in this pool.
    pub(crate) fn full_error(&self, req: &Request, min_align_mask: u64) -> Error {
        let mut largest = 0;
        let mut used = 0;
        for area in self.areas.iter() {
            let st = area.state.lock();
            largest = largest.max(P::largest_free_run(&st.policy, &area.geom));
            used += st.used;
        }
        let possible = self.areas.iter().any(|a| fits_empty(&a.geom, req));
        if !possible {
            return Error::AlignmentImpossible {
                align_mask: req.align_mask,
                min_align_mask,
            };
        }
        Error::PoolFull {
            requested: req.nslots,
            free: self.nslabs - used,
            largest_run: largest,
        }
    }

    /// Publishes the record at slot `s`: sets its start bit. Called under
    /// the area lock, after the record words are written.
    #[inline]
    fn set_start_bit(&self, s: u32) {
        let word = &self.start_bits[(s / 64) as usize];
        let bit = 1u64 << (s % 64);
        if self.start_words_private {
            // Every slot of this word is in the area whose lock is held, so
            // no one else writes it: a plain load and store do, without a
            // locked instruction. Readers only load.
            word.store(word.load(Ordering::Relaxed) | bit, Ordering::Release);
        } else {
            word.fetch_or(bit, Ordering::Release);
        }
    }

    /// Clears the start bit of slot `s` under the area lock; whether it was
    /// set.
    #[inline]
    fn clear_start_bit(&self, s: u32) -> bool {
        let word = &self.start_bits[(s / 64) as usize];
        let bit = 1u64 << (s % 64);
        let old = if self.start_words_private {
            // As in `set_start_bit`. Release, not Relaxed: a reader's
            // Acquire load that sees this store must still see the records
            // of the other start bits in the word, published by earlier
            // Release stores that this plain store would otherwise cut
            // from the release sequence (found by the loom model
            // `sync_from_other_thread_private_words`).
            let old = word.load(Ordering::Relaxed);
            word.store(old & !bit, Ordering::Release);
            old
        } else {
            word.fetch_and(!bit, Ordering::Release)
        };
        old & bit != 0
    }

    /// Gives back the allocation starting at slot `start`, which must be
    /// live, counting `copied_back` bytes copied from the slots at unmap
    /// and taking back `uncopied` bytes counted at map time but never
    /// copied (a map that failed after allocating). Returns
    /// `Err(NotMapped)` if it is not live (a double unmap).
    pub(crate) fn release(
        &self,
        start: u32,
        nslots: u32,
        dma: crate::addr::DmaAddr,
        copied_back: usize,
        uncopied: usize,
    ) -> Result {
        #[cfg(swiotlb_loom)]
        self.releasing.fetch_add(1, Ordering::SeqCst);
        let r = self.release_slots(start, nslots, dma, copied_back, uncopied);
        // Still inside the pool after the unlock that may have left it
        // idle: the loom models check that no pool is freed here.
        #[cfg(swiotlb_loom)]
        self.releasing.fetch_sub(1, Ordering::SeqCst);
        r
    }

    /// The body of [`Pool::release`].
    #[inline(always)]
    fn release_slots(
        &self,
        start: u32,
        nslots: u32,
        dma: crate::addr::DmaAddr,
        copied_back: usize,
        uncopied: usize,
    ) -> Result {
        let area = self.area_of(start);
        let mut st = area.state.lock();
        if !self.clear_start_bit(start) {
            return Err(Error::NotMapped { dma });
        }
        P::free(&mut st.policy, &area.geom, start, nslots);
        st.used -= nslots;
        st.unmapped_from_device += copied_back as u64;
        st.mapped_to_device -= uncopied as u64;
        if self.exact_hiwater {
            self.used.fetch_sub(nslots as usize, Ordering::Relaxed);
        }
        // The unlock is the last touch of the pool: it may leave the pool
        // idle, and a growing tlb may free an idle pool (after waiting for
        // the releases in flight: `AfterRelease::guard_release`).
        drop(st);
        Ok(())
    }

    fn area_of(&self, slot: u32) -> &Area<P::Area> {
        let i = ((slot / self.area_nslabs) as usize).min(self.areas.len() - 1);
        &self.areas[i]
    }

    /// Finds the live mapping that holds physical address `phys`.
    pub(crate) fn locate(&self, phys: PhysAddr) -> Option<Located> {
        if !self.contains(phys) {
            return None;
        }
        let off = phys.0 - self.start.0;
        let slot = (off >> self.slot_shift) as u32;
        let start = self.prev_start(slot)?;
        let shape = Shape(self.shape[start as usize].load(Ordering::Relaxed));
        if slot >= start + shape.nslots() {
            return None;
        }
        let bounce = ((start as u64) << self.slot_shift) + shape.pad() as u64;
        Some(Located {
            start,
            orig: self.orig[start as usize].load(Ordering::Relaxed),
            len: shape.len(),
            pad: shape.pad(),
            nslots: shape.nslots(),
            offset: off as i64 - bounce as i64,
        })
    }

    /// The nearest slot at or below `slot` whose start bit is set.
    fn prev_start(&self, slot: u32) -> Option<u32> {
        let mut w = (slot / 64) as usize;
        let mut bits = self.start_bits[w].load(Ordering::Acquire) & (u64::MAX >> (63 - slot % 64));
        loop {
            if bits != 0 {
                return Some(w as u32 * 64 + 63 - bits.leading_zeros());
            }
            if w == 0 {
                return None;
            }
            w -= 1;
            bits = self.start_bits[w].load(Ordering::Acquire);
        }
    }

    /// The CPU address of byte `off` of the pool.
    #[inline]
    pub(crate) fn slot_ptr(&self, off: usize) -> *mut u8 {
        // SAFETY: callers pass offsets inside the pool (of a live
        // allocation), and `vaddr` is valid for the pool's length (type
        // invariant), so the result stays in bounds of that allocation.
        unsafe { self.vaddr.as_ptr().add(off) }
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

/// A coherent allocation from a pool (Linux `swiotlb_alloc`): memory the
/// CPU and the device share for as long as it lives, with no copies. The
/// CPU reaches it through `cpu`, the device through `dma`.
///
/// It is a plain description, not an owner: it is given back with
/// [`Pool::free_coherent`] by its device address, as Linux's
/// `swiotlb_free` takes a page, and reading or writing through `cpu` is
/// the caller's `unsafe` business, valid only until the free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coherent {
    /// The CPU address of the first byte.
    pub cpu: NonNull<u8>,
    /// The physical address of the first byte.
    pub phys: PhysAddr,
    /// The address the device uses.
    pub dma: DmaAddr,
    /// Bytes asked for; the slots holding them are all zeroed and all
    /// belong to the allocation.
    pub size: usize,
}

impl<P: Policy> Pool<P> {
    /// Allocates `size` bytes shared with `dev`, zeroed, page aligned and
    /// aligned to the size's power-of-two order in device address space:
    /// Linux's `swiotlb_alloc`, which asks `swiotlb_find_slots` for
    /// `align = (1 << (get_order(size) + PAGE_SHIFT)) - 1` with no original
    /// address, and `dma_direct_alloc`, which zeroes what it hands out.
    ///
    /// The record of the allocation has a null original: nothing is ever
    /// copied into or out of it, a streaming unmap or sync of its address is
    /// [`Error::NotMapped`], and only [`Pool::free_coherent`] frees it. Its
    /// slots come from the same policy as streaming mappings, so they are
    /// never handed out twice (CVE-2024-35814 was a coherent allocation
    /// overlapping another in Linux).
    ///
    /// # Errors
    /// [`Error::ZeroSize`], [`Error::TooLarge`] (more than a segment),
    /// [`Error::PoolFull`], [`Error::AlignmentImpossible`] (no page-aligned
    /// start, as Linux's "Cannot allocate pages from non page-aligned
    /// swiotlb addr"), [`Error::Unreachable`]; each is counted.
    pub fn alloc_coherent<T: Translate>(&self, dev: &Device<T>, size: usize) -> Result<Coherent> {
        let r = self.alloc_coherent_inner(dev, size);
        if let Err(e) = &r {
            self.count_failure(e);
        }
        r
    }

    fn alloc_coherent_inner<T: Translate>(&self, dev: &Device<T>, size: usize) -> Result<Coherent> {
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        let page = 1u64 << self.page_shift;
        // 1 << (get_order(size) + PAGE_SHIFT): the size in pages rounded
        // up to a power of two. Saturates for absurd sizes, which
        // `request` then rejects as too large.
        let order_bytes = (size as u64)
            .div_ceil(page)
            .checked_next_power_of_two()
            .and_then(|pages| pages.checked_mul(page))
            .unwrap_or(1 << 63);
        let align = order_bytes - 1;
        let min_align = dev.min_align_mask();
        let (mut req, _) = self.request(dev, 0, size, align)?;
        // Linux hands `size` itself to `swiotlb_find_slots`, not `size`
        // rounded up to the alignment as a streaming map does: a 12 KiB
        // allocation holds 6 slots at a 16 KiB-aligned start.
        let slot_mask = (1u64 << self.slot_shift) - 1;
        req.nslots = ((size as u64 + slot_mask) >> self.slot_shift) as u32;
        // Coherent allocations are rare (rings, descriptor tables): they
        // start in area 0 rather than a per-CPU area.
        let start = self
            .alloc_counted(&req, 0, core::ptr::null_mut(), size, 0, 0)
            .ok_or_else(|| self.full_error(&req, min_align))?;
        let off = self.slot_offset(start);
        let phys = self.start + off as u64;
        let dma = dev.phys_to_dma(phys);
        if phys.0 & (page - 1) != 0 {
            // The alignment holds in device address space; a translation
            // that is not page aligned breaks it in physical space, where
            // Linux refuses too (`swiotlb_alloc`'s PAGE_ALIGNED check).
            self.release(start, req.nslots, dma, 0, 0)?;
            return Err(Error::AlignmentImpossible {
                align_mask: align,
                min_align_mask: min_align,
            });
        }
        if !dev.translate().dma_capable(&dev.limits(), phys, dma, size) {
            self.release(start, req.nslots, dma, 0, 0)?;
            return Err(Error::Unreachable { dma, size });
        }
        let bytes = (req.nslots as usize) << self.slot_shift;
        let cpu = self.slot_ptr(off);
        // SAFETY:
        // - `cpu` is valid for writes of `bytes`: the allocation's slots,
        //   inside the pool (type invariant on `vaddr`);
        // - the slots belong to this new allocation alone (the `Policy`
        //   contract), and the CPU touches them only on its behalf; no
        //   device has been given their address yet.
        unsafe { core::ptr::write_bytes(cpu, 0, bytes) };
        // SAFETY: `cpu` is `vaddr` (non-null) plus an offset inside the
        // pool, which does not wrap the address space, so it is non-null.
        let cpu = unsafe { NonNull::new_unchecked(cpu) };
        Ok(Coherent {
            cpu,
            phys,
            dma,
            size,
        })
    }

    /// Frees a coherent allocation by its device address (Linux
    /// `swiotlb_free`).
    ///
    /// # Errors
    /// [`Error::NotMapped`] if `dma` is not the start of a live coherent
    /// allocation of this pool: outside the pool, inside an allocation, a
    /// streaming mapping, or already freed. Nothing changes then.
    pub fn free_coherent<T: Translate>(&self, dev: &Device<T>, dma: DmaAddr) -> Result {
        let phys = dev.translate().dma_to_phys(dma);
        let r = self.free_coherent_at(phys, dma);
        if let Err(e) = &r {
            self.count_failure(e);
        }
        r
    }

    fn free_coherent_at(&self, phys: PhysAddr, dma: DmaAddr) -> Result {
        let not_mapped = Error::NotMapped { dma };
        if !self.contains(phys) {
            return Err(not_mapped);
        }
        let off = phys.0 - self.start.0;
        if off & ((1 << self.slot_shift) - 1) != 0 {
            return Err(not_mapped);
        }
        let s = (off >> self.slot_shift) as u32;
        let area = self.area_of(s);
        // Checks and free under one hold of the area lock (an allocation
        // never leaves its area): a second free racing this one finds the
        // start bit clear, and cannot free an allocation made in between.
        let mut st = area.state.lock();
        let bit = 1u64 << (s % 64);
        let live = self.start_bits[(s / 64) as usize].load(Ordering::Acquire) & bit != 0;
        if !live || !self.orig[s as usize].load(Ordering::Relaxed).is_null() {
            return Err(not_mapped);
        }
        let nslots = Shape(self.shape[s as usize].load(Ordering::Relaxed)).nslots();
        self.clear_start_bit(s);
        P::free(&mut st.policy, &area.geom, s, nslots);
        st.used -= nslots;
        drop(st);
        if self.exact_hiwater {
            self.used.fetch_sub(nslots as usize, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Linux's area count: the wanted count rounded up to a power of two, then
/// halved until each area holds a segment (`limit_nareas`, kept a power of
/// two). A pool smaller than one segment has one area.
const fn area_count(wanted: u32, nslabs: u32, segment: u32) -> u32 {
    let wanted = if wanted == 0 { 1 } else { wanted };
    let mut n = match wanted.checked_next_power_of_two() {
        Some(n) => n,
        None => 1 << 31,
    };
    while n > 1 && nslabs / n < segment {
        n /= 2;
    }
    n
}

/// Whether `req` could be met in an empty area of this geometry.
fn fits_empty(geom: &AreaGeom, req: &Request) -> bool {
    let mut s = geom.first;
    // Find the first aligned slot, then stride; the pattern of segment
    // lines and boundaries repeats, so a bounded number of candidates
    // decides it.
    let end = geom.end();
    let mut tries = 0u32;
    while s < end && tries < 1 << 16 {
        if req.aligned(s, geom.slot_shift) {
            if !req.crosses_boundary(s, geom.slot_shift) && s + req.nslots <= geom.run_limit(s) {
                return true;
            }
            s = s.saturating_add(req.stride);
        } else {
            s += 1;
        }
        tries += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

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
