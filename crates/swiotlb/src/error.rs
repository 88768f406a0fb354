//! The one error type of the core.

#![forbid(unsafe_code)]

use core::fmt;

use crate::addr::{DmaAddr, PhysAddr};

/// The result type of the core.
pub type Result<T = ()> = core::result::Result<T, Error>;

/// Why a pool could not be built over the memory it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PoolProblem {
    /// The region holds less than one slot.
    TooSmall,
    /// The physical base is not aligned to the slot size.
    Unaligned,
    /// The region wraps around the end of the address space.
    Wraps,
    /// The slot shift is outside `9..=16` or the segment is not a power of
    /// two in `1..=65536`.
    BadGeometry,
    /// The pool has more slots than the metadata can index (`u32::MAX`).
    TooManySlots,
}

/// What memory could not be allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AllocWhat {
    /// The slots of a heap pool ([`Pool::new_heap`](crate::Pool::new_heap)).
    PoolMemory,
    /// A pool's bookkeeping: per-slot records and the policy's per-area
    /// state.
    Metadata,
}

/// What is wrong with a configuration: a growing tlb's
/// ([`GrowConfig`](crate::GrowConfig), with the `alloc` feature), the
/// memory of a device tree's pools, or the metadata memory given to a
/// heapless pool ([`Pool::new_with_metadata`](crate::Pool::new_with_metadata)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConfigProblem {
    /// `start` is smaller than one segment, the largest mapping.
    StartBelowSegment {
        /// `start`, in bytes.
        start: usize,
        /// A segment, in bytes.
        segment: usize,
    },
    /// `grow_by` is smaller than one segment.
    GrowBelowSegment {
        /// `grow_by`, in bytes.
        grow_by: usize,
        /// A segment, in bytes.
        segment: usize,
    },
    /// `max` is smaller than `start`.
    MaxBelowStart {
        /// `start`, in bytes.
        start: usize,
        /// `max`, in bytes.
        max: usize,
    },
    /// A device tree pool has no CPU mapping: the caller's memory callback
    /// returned none for it, or it is larger than the address space.
    UnmappedRegion {
        /// Physical address of the region.
        phys: crate::addr::PhysAddr,
        /// Bytes in the region.
        len: u64,
    },
    /// The metadata memory given to a heapless pool is shorter than the
    /// pool needs.
    MetadataTooSmall {
        /// Bytes given.
        given: usize,
        /// Bytes enough wherever they lie
        /// ([`Pool::metadata_len`](crate::Pool::metadata_len)).
        needed: usize,
    },
    /// The metadata memory given to a heapless pool would be long enough
    /// at an address aligned to `align`, but not at its own: aligning it
    /// takes `skip` bytes from its start.
    MetadataMisaligned {
        /// The alignment the pool uses its metadata from
        /// ([`Pool::METADATA_ALIGN`](crate::Pool::METADATA_ALIGN)).
        align: usize,
        /// Bytes lost to alignment at this address.
        skip: usize,
    },
}

/// What the strict `swiotlb=` parser found that Linux would silently
/// ignore or adjust.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ParamProblem {
    /// The value is empty.
    Empty,
    /// Text Linux does not read (a typo, a unit suffix, a trailing comma).
    Trailing,
    /// A number is larger than a pool can be: more than 2^52 slots or
    /// 2^24 areas (Linux's own arithmetic wraps there).
    Overflow,
    /// The slot count is zero.
    ZeroSlots,
    /// Linux changes the slot count given: up to a multiple of the segment
    /// (128), or, once an area count is in force, up to a power of two
    /// (`round_up_default_nslabs`).
    SlotsRounded,
    /// The area count is zero; Linux takes 1.
    ZeroAreas,
    /// The area count is not a power of two; Linux rounds it up.
    AreasRounded,
    /// The area count raised the slot count (`nareas * 128 > nslabs`).
    SlotsRaised,
}

/// Why a `swiotlb.region=<size>@<address>[,force]` value is refused
/// ([`RegionParam`](crate::cmdline::RegionParam)). Every problem but
/// [`Unaligned`](RegionProblem::Unaligned) is refused by the lenient parser
/// too: there is no sensible pool to fall back to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RegionProblem {
    /// Not `<size>@<address>[,force]`: a missing number or `@`, a unit
    /// that `memparse` does not know, or text after the value.
    Garbage,
    /// The size is 2^64 bytes or more, suffix included.
    SizeOverflow,
    /// The address is 2^64 or more, suffix included.
    AddressOverflow,
    /// The region runs past the end of the 64-bit address space.
    EndOverflow,
    /// The region, once cut to whole slots, holds less than one segment
    /// (128 slots of 2 KiB), the largest mapping.
    TooSmall {
        /// Bytes of whole slots in the region.
        size: u64,
        /// Bytes in a segment.
        segment: u64,
    },
    /// The base or the size is not a multiple of the slot size (strict
    /// parser only; the lenient one shrinks the region to whole slots).
    Unaligned,
}

/// A key of the kernel command line that this crate reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CmdlineKey {
    /// `swiotlb=`, Linux's own.
    Swiotlb,
    /// `swiotlb.high=`, the size of the high pool.
    High,
    /// `swiotlb.region=`, the default pool at a given address.
    Region,
}

/// What the strict command-line parser
/// ([`Cmdline::parse_strict`](crate::cmdline::Cmdline::parse_strict))
/// refuses in how the keys combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CmdlineProblem {
    /// A key given twice (the lenient parser merges `swiotlb=` values as
    /// Linux does and takes the last of our own keys).
    Repeated {
        /// The key.
        key: CmdlineKey,
        /// Byte offset of its first occurrence (`at` is the second's).
        first: usize,
    },
    /// `swiotlb=` gives a slot count, but `swiotlb.region=` sets the size.
    SlotsOverridden,
    /// `swiotlb=noforce` asks for no pool, `swiotlb.region=` for one.
    NoForceWithRegion,
}

/// Everything that can go wrong in the core.
///
/// Every variant is cheap to copy and carries the context a user needs to
/// tell "too large for any mapping" from "full" from "unreachable". The
/// `Display` text starts with `swiotlb:` so that it stands out in a log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Error {
    /// A mapping of zero bytes was asked for.
    ZeroSize,
    /// The mapping is larger than any mapping this device may have
    /// ([`Pool::max_mapping_size`](crate::Pool::max_mapping_size)): it can
    /// never succeed, however empty the pool.
    TooLarge {
        /// Bytes asked for.
        size: usize,
        /// The largest mapping this device may have.
        max: usize,
    },
    /// No free run of slots fits the request right now; freeing mappings
    /// may help.
    PoolFull {
        /// Slots the request needs (padding included).
        requested: u32,
        /// Free slots in the whole pool.
        free: u32,
        /// The longest run of free slots in the pool.
        largest_run: u32,
    },
    /// The alignment asked for can never be met in this pool: a mask that is
    /// not `2^n - 1`, or an alignment stride that no slot of the pool
    /// satisfies together with the request's size.
    AlignmentImpossible {
        /// The allocation alignment mask in force (slot mask included).
        align_mask: u64,
        /// The device's `min_align_mask`.
        min_align_mask: u64,
    },
    /// The bounce slots were found but the device cannot reach them (the
    /// pool lies above the device's DMA mask or bus limit); nothing stays
    /// mapped. Linux: "swiotlb addr ... overflow".
    Unreachable {
        /// The device address of the bounce buffer.
        dma: DmaAddr,
        /// Bytes of the mapping.
        size: usize,
    },
    /// The device cannot reach the buffer and has no bounce pool to use.
    NoPool,
    /// The pool, as this device sees it (its first device address and
    /// length), covers device address 0, or wraps past the top of the bus
    /// onto it. No slot of such a pool is handed out, for bounces and
    /// coherent allocations alike: address 0 is what many drivers and
    /// transports take for a failed mapping (virtio-drivers' `Hal`, the
    /// `DMA_MAPPING_ERROR`-less APIs of firmware), so a pool that could
    /// hand it out is refused as a whole, before any slot is chosen.
    /// Counted as [`FailReason::Unreachable`]. Move the pool, or the bus
    /// window of the device's translation, off device address 0.
    DmaZeroInPool {
        /// The device address of the pool's first byte.
        start: DmaAddr,
        /// Bytes in the pool.
        len: usize,
    },
    /// No free run of slots fits the request, and the growing tlb could
    /// not add memory for it because its provider (or a platform hook)
    /// failed: not because of its limit ([`GrowConfig::max`](crate::GrowConfig),
    /// which gives [`Error::PoolFull`]). A caller that may not sleep gets
    /// it when its transient pool could not be made; one that may sleep
    /// without `std` when its growth failed (with `std` it waits, and
    /// fails with [`Error::TimedOut`]). The tlb keeps serving from the
    /// pools it has: freeing mappings helps, as for a full pool. Each
    /// failed growth is counted in
    /// [`TlbStats::grow_failures`](crate::tlb::TlbStats::grow_failures);
    /// the map is counted as [`FailReason::PoolFull`].
    GrowFailed {
        /// Slots the request needs (padding included).
        requested: u32,
        /// Free slots in the pool that refused it.
        free: u32,
        /// The longest run of free slots in that pool.
        largest_run: u32,
    },
    /// A caller that may sleep waited for slots in a full growing tlb that
    /// could not grow, and its timeout passed first. Counted as
    /// [`FailReason::PoolFull`].
    TimedOut {
        /// How long it waited, in microseconds.
        waited_us: u64,
    },
    /// A request queued on a growing tlb (a deferred request, a waiter, a
    /// `map_async` future) was still queued when the tlb was dropped: it
    /// will never be served. Counted nowhere (the tlb is gone).
    TlbGone,
    /// Unmap or sync of an address that is not a live mapping of this pool.
    NotMapped {
        /// The device address given.
        dma: DmaAddr,
    },
    /// A coherent allocation freed with a size other than the one it was
    /// allocated with: nothing is freed.
    WrongSize {
        /// The device address given.
        dma: DmaAddr,
        /// The size given.
        size: usize,
        /// The allocation's size.
        allocated: usize,
    },
    /// A sync or unmap that runs past the end of its mapping: nothing is
    /// copied.
    OutOfBounds {
        /// Byte offset of the request inside the mapping (negative offsets
        /// are reported as `usize::MAX`).
        offset: usize,
        /// Bytes asked for.
        len: usize,
        /// Bytes in the mapping.
        mapping_len: usize,
    },
    /// A scatter-gather list has a segment longer than the device's
    /// `max_segment_size`.
    SegmentTooLong {
        /// Index of the segment in the list.
        index: usize,
        /// Its length.
        len: usize,
        /// The device's limit.
        max: usize,
    },
    /// The memory given for a pool cannot hold one.
    InvalidPool {
        /// The physical base given.
        base: PhysAddr,
        /// What is wrong with it.
        problem: PoolProblem,
    },
    /// Memory for a pool or for its bookkeeping could not be allocated.
    OutOfMemory {
        /// What was being allocated.
        what: AllocWhat,
        /// Bytes asked for.
        bytes: usize,
    },
    /// A configuration cannot work: a growing tlb's, or the metadata memory
    /// given to a heapless pool.
    BadConfig {
        /// What is wrong.
        problem: ConfigProblem,
    },
    /// A mapping whose alignment padding (`alloc_align_mask`, or the
    /// `min_align_mask` offset) makes it need more than a segment, the
    /// most one mapping can hold, although its own size would fit.
    PaddingTooLarge {
        /// Bytes asked for.
        size: usize,
        /// Bytes of slots the mapping needs once aligned and padded.
        padded: u64,
        /// The `alloc_align_mask` asked for.
        align_mask: u64,
        /// Bytes in a segment.
        segment: usize,
    },
    /// A `swiotlb=` value that the strict parser rejects.
    BadParam {
        /// Byte offset in the value where the problem was found.
        at: usize,
        /// What is wrong.
        problem: ParamProblem,
    },
    /// A `swiotlb.region=` value that cannot give a pool.
    BadRegion {
        /// Byte offset of the problem (in the value, or in the line when
        /// the whole command line was parsed).
        at: usize,
        /// What is wrong.
        problem: RegionProblem,
    },
    /// Keys of a kernel command line that the strict parser refuses
    /// together.
    BadCmdline {
        /// Byte offset in the line of the key at fault.
        at: usize,
        /// What is wrong.
        problem: CmdlineProblem,
    },
    /// Two pools of one platform would share memory: the command-line
    /// region and a device-tree pool, or the region and the high pool.
    RegionOverlap {
        /// Physical base of the command-line region.
        base: PhysAddr,
        /// Bytes in the region.
        size: u64,
        /// Physical base of the other pool.
        other: PhysAddr,
        /// Bytes in the other pool.
        other_size: u64,
    },
    /// A device attached to a platform reaches none of the pools that
    /// could serve it (its DMA mask or bus limit stops short of the
    /// command-line region): it is refused when attached rather than at its
    /// first map.
    RegionUnreachable {
        /// The device address of the pool's first byte, for this device.
        dma: DmaAddr,
        /// Bytes in the pool.
        size: u64,
    },
}

/// The failure reasons a pool counts, one counter each (see
/// [`Stats::failures`](crate::Stats::failures)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum FailReason {
    /// [`Error::TooLarge`] and [`Error::ZeroSize`].
    TooLarge = 0,
    /// [`Error::PoolFull`].
    PoolFull = 1,
    /// [`Error::AlignmentImpossible`].
    Alignment = 2,
    /// [`Error::Unreachable`].
    Unreachable = 3,
    /// [`Error::NotMapped`], [`Error::OutOfBounds`] and other misuse.
    Misuse = 4,
}

impl FailReason {
    /// How many reasons there are.
    pub const COUNT: usize = 5;
    /// All reasons, in counter order.
    pub const ALL: [FailReason; Self::COUNT] = [
        FailReason::TooLarge,
        FailReason::PoolFull,
        FailReason::Alignment,
        FailReason::Unreachable,
        FailReason::Misuse,
    ];

    /// A short snake-case name, used as a statistics key.
    pub const fn name(self) -> &'static str {
        match self {
            FailReason::TooLarge => "too_large",
            FailReason::PoolFull => "pool_full",
            FailReason::Alignment => "alignment",
            FailReason::Unreachable => "unreachable",
            FailReason::Misuse => "misuse",
        }
    }
}

impl Error {
    /// The counter this error is counted under.
    pub const fn reason(&self) -> FailReason {
        match self {
            Error::ZeroSize | Error::TooLarge { .. } | Error::SegmentTooLong { .. } => {
                FailReason::TooLarge
            }
            Error::PoolFull { .. }
            | Error::GrowFailed { .. }
            | Error::TimedOut { .. }
            | Error::TlbGone => FailReason::PoolFull,
            Error::AlignmentImpossible { .. } | Error::PaddingTooLarge { .. } => {
                FailReason::Alignment
            }
            Error::Unreachable { .. }
            | Error::NoPool
            | Error::DmaZeroInPool { .. }
            | Error::RegionUnreachable { .. } => FailReason::Unreachable,
            Error::NotMapped { .. }
            | Error::WrongSize { .. }
            | Error::OutOfBounds { .. }
            | Error::InvalidPool { .. }
            | Error::OutOfMemory { .. }
            | Error::BadConfig { .. }
            | Error::BadParam { .. }
            | Error::BadRegion { .. }
            | Error::BadCmdline { .. }
            | Error::RegionOverlap { .. } => FailReason::Misuse,
        }
    }

    /// A short snake-case name of the variant, for machine-readable output.
    pub const fn kind(&self) -> &'static str {
        match self {
            Error::ZeroSize => "zero_size",
            Error::TooLarge { .. } => "too_large",
            Error::PoolFull { .. } => "pool_full",
            Error::GrowFailed { .. } => "grow_failed",
            Error::AlignmentImpossible { .. } => "alignment_impossible",
            Error::Unreachable { .. } => "unreachable",
            Error::NoPool => "no_pool",
            Error::DmaZeroInPool { .. } => "dma_zero_in_pool",
            Error::TimedOut { .. } => "timed_out",
            Error::TlbGone => "tlb_gone",
            Error::NotMapped { .. } => "not_mapped",
            Error::WrongSize { .. } => "wrong_size",
            Error::OutOfBounds { .. } => "out_of_bounds",
            Error::SegmentTooLong { .. } => "segment_too_long",
            Error::InvalidPool { .. } => "invalid_pool",
            Error::OutOfMemory { .. } => "out_of_memory",
            Error::BadConfig { .. } => "bad_config",
            Error::PaddingTooLarge { .. } => "padding_too_large",
            Error::BadParam { .. } => "bad_param",
            Error::BadRegion { .. } => "bad_region",
            Error::BadCmdline { .. } => "bad_cmdline",
            Error::RegionOverlap { .. } => "region_overlap",
            Error::RegionUnreachable { .. } => "region_unreachable",
        }
    }
}

impl fmt::Display for PoolProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PoolProblem::TooSmall => "region smaller than one slot",
            PoolProblem::Unaligned => "physical base not aligned to the slot size",
            PoolProblem::Wraps => "region wraps around the address space",
            PoolProblem::BadGeometry => "slot shift or segment size out of range",
            PoolProblem::TooManySlots => "more slots than the metadata can index",
        })
    }
}

impl fmt::Display for AllocWhat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AllocWhat::PoolMemory => "pool memory",
            AllocWhat::Metadata => "pool metadata",
        })
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ConfigProblem::StartBelowSegment { start, segment } => write!(
                f,
                "growing tlb: the first pool ({start} bytes) is smaller than one segment ({segment} bytes)"
            ),
            ConfigProblem::GrowBelowSegment { grow_by, segment } => write!(
                f,
                "growing tlb: the growth step ({grow_by} bytes) is smaller than one segment ({segment} bytes)"
            ),
            ConfigProblem::MaxBelowStart { start, max } => write!(
                f,
                "growing tlb: the limit ({max} bytes) is below the first pool ({start} bytes)"
            ),
            ConfigProblem::MetadataTooSmall { given, needed } => write!(
                f,
                "pool metadata: {given} bytes given, {needed} needed (Pool::metadata_len)"
            ),
            ConfigProblem::MetadataMisaligned { align, skip } => write!(
                f,
                "pool metadata: long enough only if aligned to {align} bytes; at its address aligning it takes {skip} bytes (Pool::metadata_len counts them)"
            ),
            ConfigProblem::UnmappedRegion { phys, len } => {
                write!(f, "the region of {len} bytes at {phys} has no CPU mapping")
            }
        }
    }
}

impl fmt::Display for RegionProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegionProblem::Garbage => f.write_str(
                "not <size>@<address>[,force] (numbers with an optional K/M/G/T/P/E suffix)",
            ),
            RegionProblem::SizeOverflow => f.write_str("size of 2^64 bytes or more"),
            RegionProblem::AddressOverflow => f.write_str("address of 2^64 or more"),
            RegionProblem::EndOverflow => {
                f.write_str("region runs past the end of the address space")
            }
            RegionProblem::TooSmall { size, segment } => write!(
                f,
                "region of {size} bytes (whole slots) is smaller than one {segment}-byte segment"
            ),
            RegionProblem::Unaligned => {
                f.write_str("base or size not a multiple of the 2 KiB slot")
            }
        }
    }
}

impl fmt::Display for CmdlineKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CmdlineKey::Swiotlb => "swiotlb=",
            CmdlineKey::High => "swiotlb.high=",
            CmdlineKey::Region => "swiotlb.region=",
        })
    }
}

impl fmt::Display for CmdlineProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CmdlineProblem::Repeated { key, first } => {
                write!(f, "{key} given again (first at byte {first})")
            }
            CmdlineProblem::SlotsOverridden => {
                f.write_str("swiotlb= slot count ignored: swiotlb.region= sets the size")
            }
            CmdlineProblem::NoForceWithRegion => {
                f.write_str("swiotlb=noforce asks for no pool, swiotlb.region= for one")
            }
        }
    }
}

impl fmt::Display for ParamProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParamProblem::Empty => "empty value",
            ParamProblem::Trailing => "text Linux ignores",
            ParamProblem::Overflow => "number too large",
            ParamProblem::ZeroSlots => "zero slots",
            ParamProblem::SlotsRounded => {
                "slot count not a multiple of 128, or not a power of two with areas (Linux rounds it up)"
            }
            ParamProblem::ZeroAreas => "zero areas (Linux uses 1)",
            ParamProblem::AreasRounded => "area count not a power of two (Linux rounds it up)",
            ParamProblem::SlotsRaised => {
                "area count needs more slots than given (Linux raises the slot count)"
            }
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::ZeroSize => write!(f, "swiotlb: zero-length mapping"),
            Error::TooLarge { size, max } => write!(
                f,
                "swiotlb: mapping of {size} bytes is larger than any mapping can be ({max} bytes)"
            ),
            Error::PoolFull {
                requested,
                free,
                largest_run,
            } => {
                let unit = if requested == 1 { "slot" } else { "slots" };
                write!(
                    f,
                    "swiotlb buffer is full: {requested} {unit} requested, {free} free, largest free run {largest_run}"
                )?;
                if largest_run >= requested {
                    // Room exists, but not at a start the alignment masks
                    // and boundaries allow.
                    f.write_str(" (no aligned start fits)")?;
                }
                Ok(())
            }
            Error::GrowFailed {
                requested,
                free,
                largest_run,
            } => {
                let unit = if requested == 1 { "slot" } else { "slots" };
                write!(
                    f,
                    "swiotlb buffer is full and could not grow (its memory provider failed): {requested} {unit} requested, {free} free, largest free run {largest_run}"
                )
            }
            Error::AlignmentImpossible {
                align_mask,
                min_align_mask,
            } => write!(
                f,
                "swiotlb: alignment impossible in this pool (alloc_align_mask {align_mask:#x}, min_align_mask {min_align_mask:#x})"
            ),
            Error::Unreachable { dma, size } => write!(
                f,
                "swiotlb: bounce buffer {dma}+{size} is not reachable by the device"
            ),
            Error::NoPool => write!(
                f,
                "swiotlb: device cannot reach the buffer and has no bounce pool"
            ),
            Error::DmaZeroInPool { start, len } => write!(
                f,
                "swiotlb: the pool at device address {start} ({len} bytes) covers device address 0, which drivers take for a failed mapping; no slot of it is handed out"
            ),
            Error::TimedOut { waited_us } => write!(
                f,
                "swiotlb buffer is full: waited {waited_us} us for slots and none came"
            ),
            Error::TlbGone => write!(
                f,
                "swiotlb: the growing tlb was dropped while the request was still queued"
            ),
            Error::NotMapped { dma } => {
                write!(f, "swiotlb: {dma} is not a live bounce mapping")
            }
            Error::WrongSize {
                dma,
                size,
                allocated,
            } => write!(
                f,
                "swiotlb: coherent allocation at {dma} freed as {size} bytes, but it holds {allocated}; nothing freed"
            ),
            Error::OutOfBounds {
                offset,
                len,
                mapping_len,
            } => write!(
                f,
                "swiotlb: {len} bytes at offset {offset} run past the {mapping_len}-byte mapping"
            ),
            Error::SegmentTooLong { index, len, max } => write!(
                f,
                "swiotlb: scatter-gather segment {index} is {len} bytes, the device takes at most {max}"
            ),
            Error::InvalidPool { base, problem } => {
                write!(f, "swiotlb: cannot build a pool at {base}: {problem}")
            }
            Error::OutOfMemory { what, bytes } => {
                write!(f, "swiotlb: out of memory: {bytes} bytes of {what}")
            }
            Error::BadConfig { problem } => {
                write!(f, "swiotlb: bad configuration: {problem}")
            }
            Error::PaddingTooLarge {
                size,
                padded,
                align_mask,
                segment,
            } => write!(
                f,
                "swiotlb: a mapping of {size} bytes aligned with alloc_align_mask {align_mask:#x} needs {padded} bytes of slots, more than a segment ({segment} bytes) can hold"
            ),
            Error::BadParam { at, problem } => {
                write!(f, "swiotlb: the strict swiotlb= check stops at byte {at}: {problem}")
            }
            Error::BadRegion { at, problem } => {
                write!(f, "swiotlb: swiotlb.region= refused at byte {at}: {problem}")
            }
            Error::BadCmdline { at, problem } => {
                write!(f, "swiotlb: the strict command-line check stops at byte {at}: {problem}")
            }
            Error::RegionOverlap {
                base,
                size,
                other,
                other_size,
            } => write!(
                f,
                "swiotlb: the swiotlb.region= pool ({size} bytes at {base}) overlaps another pool ({other_size} bytes at {other})"
            ),
            Error::RegionUnreachable { dma, size } => write!(
                f,
                "swiotlb: the device cannot reach the bounce pool ({size} bytes at device address {dma}): its DMA mask or bus limit stops short"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}
