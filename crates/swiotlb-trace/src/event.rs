//! The records a parser yields: trace events with their typed fields,
//! lost-event notes, and kernel log messages.
//!
//! Field meanings are Linux's (`include/trace/events/dma.h` and
//! `swiotlb.h`, 6.12 on); each type says what it means for a replay.

use std::fmt;
use std::sync::Arc;

use crate::addr::{DmaAddr, PhysAddr};

/// One parsed line.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Record {
    /// A trace event this crate knows.
    Event(Event),
    /// The ring buffer of a CPU overflowed: events are missing here, so a
    /// replay from this point on may see unmaps of maps it never saw.
    Lost(Lost),
    /// A swiotlb message of the kernel log (dmesg input).
    Kernel(KernelMessage),
}

/// A trace event: where and when it happened, and what.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Event {
    /// 1-based line number in the input.
    pub line: u64,
    /// Trace clock, in nanoseconds (seconds and fraction as printed; a
    /// counter clock without a fraction is taken as nanoseconds).
    pub timestamp_ns: u64,
    /// The CPU whose ring buffer recorded the event.
    pub cpu: u32,
    /// The PID of the task that was running.
    pub pid: u32,
    /// The device (`dev_name()`, e.g. `0000:00:04.0`); `None` for markers.
    pub device: Option<Device>,
    /// What happened, with its fields.
    pub kind: EventKind,
}

/// The events this crate parses.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// `swiotlb_bounced`: a mapping went through the bounce buffer. Before
    /// 6.12 the only swiotlb event; from 6.12 on it comes with a `dma_map_*`.
    Bounced(Bounced),
    /// `dma_map_page` / `dma_map_resource`: one buffer mapped.
    Map(Map),
    /// `dma_unmap_page` / `dma_unmap_resource`: one mapping released.
    Unmap(Unmap),
    /// `dma_map_sg`: a scatterlist mapped.
    MapSg(MapSg),
    /// `dma_map_sg_err`: mapping a scatterlist failed.
    MapSgErr(MapSgErr),
    /// `dma_unmap_sg`: a scatterlist released.
    UnmapSg(UnmapSg),
    /// `dma_sync_single_for_cpu` / `_for_device`.
    Sync(Sync),
    /// `dma_sync_sg_for_cpu` / `_for_device`.
    SyncSg(SyncSg),
    /// `dma_alloc`, `dma_alloc_pages`, `dma_alloc_sgt`, `dma_alloc_sgt_err`:
    /// coherent memory allocated (or not).
    Alloc(Alloc),
    /// `dma_free`, `dma_free_pages`, `dma_free_sgt`.
    Free(Free),
    /// `tracing_mark_write`: text a user wrote to `trace_marker`.
    Marker(String),
}

/// The direction of a mapping (`enum dma_data_direction`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `BIDIRECTIONAL`: copied in at map, back at unmap.
    Bidirectional,
    /// `TO_DEVICE`: copied in at map only.
    ToDevice,
    /// `FROM_DEVICE`: copied back at unmap only (and in at map, since
    /// CVE-2022-0854).
    FromDevice,
    /// `NONE`: no transfer (debugging only in Linux).
    None,
}

/// `DMA_ATTR_*` bits, with Linux's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Attrs {
    bits: u64,
    unknown_names: bool,
}

impl Attrs {
    /// `DMA_ATTR_WEAK_ORDERING`.
    pub const WEAK_ORDERING: u64 = 1 << 1;
    /// `DMA_ATTR_WRITE_COMBINE`.
    pub const WRITE_COMBINE: u64 = 1 << 2;
    /// `DMA_ATTR_NO_KERNEL_MAPPING`.
    pub const NO_KERNEL_MAPPING: u64 = 1 << 4;
    /// `DMA_ATTR_SKIP_CPU_SYNC`: no copy back at unmap or sync for cpu.
    pub const SKIP_CPU_SYNC: u64 = 1 << 5;
    /// `DMA_ATTR_FORCE_CONTIGUOUS`.
    pub const FORCE_CONTIGUOUS: u64 = 1 << 6;
    /// `DMA_ATTR_ALLOC_SINGLE_PAGES`.
    pub const ALLOC_SINGLE_PAGES: u64 = 1 << 7;
    /// `DMA_ATTR_NO_WARN`: a failure is not logged.
    pub const NO_WARN: u64 = 1 << 8;
    /// `DMA_ATTR_PRIVILEGED`.
    pub const PRIVILEGED: u64 = 1 << 9;

    pub(crate) const NAMES: [(&'static str, u64); 8] = [
        ("WEAK_ORDERING", Self::WEAK_ORDERING),
        ("WRITE_COMBINE", Self::WRITE_COMBINE),
        ("NO_KERNEL_MAPPING", Self::NO_KERNEL_MAPPING),
        ("SKIP_CPU_SYNC", Self::SKIP_CPU_SYNC),
        ("FORCE_CONTIGUOUS", Self::FORCE_CONTIGUOUS),
        ("ALLOC_SINGLE_PAGES", Self::ALLOC_SINGLE_PAGES),
        ("NO_WARN", Self::NO_WARN),
        ("PRIVILEGED", Self::PRIVILEGED),
    ];

    pub(crate) const fn from_parts(bits: u64, unknown_names: bool) -> Attrs {
        Attrs {
            bits,
            unknown_names,
        }
    }

    /// The bits, named ones and those printed as `0x..`.
    pub const fn bits(self) -> u64 {
        self.bits
    }

    /// Whether every bit of `bits` is set.
    pub const fn contains(self, bits: u64) -> bool {
        self.bits & bits == bits
    }

    /// Whether the trace named an attribute this crate does not know (a
    /// newer kernel's); its bit is not in [`Attrs::bits`].
    pub const fn has_unknown_names(self) -> bool {
        self.unknown_names
    }
}

/// The GFP flags of an allocation, as printed (`GFP_KERNEL|__GFP_ZERO`,
/// or `none`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Gfp(pub(crate) Arc<str>);

impl Gfp {
    /// The flags as printed.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The flag names (none for `none`).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.split('|').filter(|n| !n.is_empty() && *n != "none")
    }

    /// Whether `name` is one of the flags.
    pub fn contains(&self, name: &str) -> bool {
        self.names().any(|n| n == name)
    }

    /// Whether the allocation could sleep: a replay may grow a pool for it
    /// (Linux grows only from sleeping contexts; `GFP_ATOMIC` and
    /// `GFP_NOWAIT` lack direct reclaim).
    pub fn may_sleep(&self) -> bool {
        self.names().any(|n| {
            matches!(
                n,
                "GFP_KERNEL"
                    | "GFP_KERNEL_ACCOUNT"
                    | "GFP_NOFS"
                    | "GFP_NOIO"
                    | "GFP_USER"
                    | "GFP_HIGHUSER"
                    | "GFP_HIGHUSER_MOVABLE"
                    | "__GFP_DIRECT_RECLAIM"
            )
        })
    }
}

impl fmt::Display for Gfp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A device name, shared between the records of one device (interned by
/// the parser, so that yielding a record does not allocate).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Device(pub(crate) Arc<str>);

impl Device {
    /// The name as printed.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for Device {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Device {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

/// `swiotlb_bounced`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Bounced {
    /// The device's DMA mask.
    pub dma_mask: u64,
    /// The device address of the original buffer (the one that was out
    /// of reach, or bounced by force).
    pub dev_addr: DmaAddr,
    /// Bytes mapped.
    pub size: u64,
    /// `FORCE`: bounced because swiotlb was forced (`swiotlb=force`, a
    /// confidential VM), not because the device could not reach.
    pub forced: bool,
}

/// Page or resource, of a single map or unmap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// `dma_map_page` / `dma_unmap_page`: memory; may bounce.
    Page,
    /// `dma_map_resource` / `dma_unmap_resource`: MMIO; never bounces.
    Resource,
}

/// `dma_map_page` / `dma_map_resource`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Map {
    /// Page or resource.
    pub target: Target,
    /// Direction.
    pub dir: Direction,
    /// The address handed to the device; [`DmaAddr::MAPPING_ERROR`] when
    /// the map failed (a full pool, an unreachable buffer).
    pub dma_addr: DmaAddr,
    /// Bytes.
    pub size: u64,
    /// The original buffer.
    pub phys_addr: PhysAddr,
    /// Attributes.
    pub attrs: Attrs,
}

impl Map {
    /// Whether the map failed (`dma_addr` is `DMA_MAPPING_ERROR`).
    pub const fn failed(&self) -> bool {
        self.dma_addr.is_mapping_error()
    }
}

/// `dma_unmap_page` / `dma_unmap_resource`: releases the mapping whose
/// `dma_addr` it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Unmap {
    /// Page or resource.
    pub target: Target,
    /// Direction.
    pub dir: Direction,
    /// The address the map returned.
    pub dma_addr: DmaAddr,
    /// Bytes.
    pub size: u64,
    /// Attributes (`SKIP_CPU_SYNC`: no copy back).
    pub attrs: Attrs,
}

/// `S/N` of the newer `dma_map_sg`: entries shown of a total.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SgCount {
    /// Entries listed in the trace (at most 128).
    pub shown: u32,
    /// Entries in all.
    pub total: u32,
}

/// `dma_map_sg`.
///
/// Both forms: 6.12.0's lists only, and the newer one with
/// `nents=S/N ents=S/M` and `[TRUNCATED]` past 128 entries.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MapSg {
    /// Direction.
    pub dir: Direction,
    /// `nents=`: entries given (newer form only).
    pub nents: Option<SgCount>,
    /// `ents=`: entries mapped (newer form only); fewer than given when
    /// an IOMMU merged entries.
    pub ents: Option<SgCount>,
    /// The lists were cut at 128 entries.
    pub truncated: bool,
    /// Device address of each mapped entry.
    pub dma_addrs: Vec<DmaAddr>,
    /// Length of each mapped entry.
    pub sizes: Vec<u64>,
    /// Original address of each given entry.
    pub phys_addrs: Vec<PhysAddr>,
    /// Attributes.
    pub attrs: Attrs,
}

impl MapSg {
    /// Entries given (`nents`), whether or not all were listed.
    pub fn given(&self) -> usize {
        self.nents
            .map_or(self.phys_addrs.len(), |c| c.total as usize)
    }

    /// Entries mapped (`ents`), whether or not all were listed.
    pub fn mapped(&self) -> usize {
        self.ents.map_or(self.dma_addrs.len(), |c| c.total as usize)
    }

    /// Bytes of the listed entries.
    pub fn listed_bytes(&self) -> u64 {
        self.sizes.iter().sum()
    }
}

/// `dma_map_sg_err` (6.13 on).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MapSgErr {
    /// Direction.
    pub dir: Direction,
    /// Original address of each entry. The kernel prints this list as
    /// `dma_addrs=`, but it holds the physical addresses.
    pub phys_addrs: Vec<PhysAddr>,
    /// The error (a negative errno, e.g. -12 for ENOMEM).
    pub err: i32,
    /// Attributes.
    pub attrs: Attrs,
}

/// `dma_unmap_sg`: releases a scatterlist, named by its original
/// addresses only (a replay finds the mappings from them).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnmapSg {
    /// Direction.
    pub dir: Direction,
    /// Original address of each entry.
    pub phys_addrs: Vec<PhysAddr>,
    /// Attributes.
    pub attrs: Attrs,
}

/// Which way a sync goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyncTo {
    /// `_for_cpu`: bounce to original (from-device and bidirectional).
    Cpu,
    /// `_for_device`: original to bounce (to-device and bidirectional).
    Device,
}

/// `dma_sync_single_for_cpu` / `_for_device`: may name any sub-range of
/// a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Sync {
    /// CPU or device.
    pub to: SyncTo,
    /// Direction.
    pub dir: Direction,
    /// Start of the synced range.
    pub dma_addr: DmaAddr,
    /// Bytes.
    pub size: u64,
}

/// `dma_sync_sg_for_cpu` / `_for_device`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncSg {
    /// CPU or device.
    pub to: SyncTo,
    /// Direction.
    pub dir: Direction,
    /// Device address of each entry.
    pub dma_addrs: Vec<DmaAddr>,
    /// Length of each entry.
    pub sizes: Vec<u64>,
}

/// Which allocation event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AllocKind {
    /// `dma_alloc` (`dma_alloc_attrs`): coherent memory. From a restricted
    /// pool, this takes swiotlb slots.
    Coherent,
    /// `dma_alloc_pages`.
    Pages,
    /// `dma_alloc_sgt` (non-contiguous).
    Sgt,
    /// `dma_alloc_sgt_err`: the non-contiguous allocation failed.
    SgtErr,
}

/// `dma_alloc`, `dma_alloc_pages`, `dma_alloc_sgt`, `dma_alloc_sgt_err`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Alloc {
    /// Which event.
    pub kind: AllocKind,
    /// Direction (6.13 on; `None` in 6.12.0's `dma_alloc`).
    pub dir: Option<Direction>,
    /// The device address; 0 or `DMA_MAPPING_ERROR` when it failed.
    pub dma_addr: DmaAddr,
    /// Bytes.
    pub size: u64,
    /// The CPU address as `%p` prints it (hashed: good only to pair an
    /// alloc with its free); `None` when not printed or not hex.
    pub virt_addr: Option<u64>,
    /// `dma_alloc_sgt`: the pages; empty for the others.
    pub phys_addrs: Vec<PhysAddr>,
    /// GFP flags: whether the caller may sleep.
    pub flags: Gfp,
    /// Attributes.
    pub attrs: Attrs,
}

/// Which free event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FreeKind {
    /// `dma_free`.
    Coherent,
    /// `dma_free_pages`.
    Pages,
    /// `dma_free_sgt`.
    Sgt,
}

/// `dma_free`, `dma_free_pages`, `dma_free_sgt`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Free {
    /// Which event.
    pub kind: FreeKind,
    /// Direction (6.13 on).
    pub dir: Option<Direction>,
    /// The device address the allocation returned.
    pub dma_addr: DmaAddr,
    /// Bytes.
    pub size: u64,
    /// The hashed CPU address, when printed.
    pub virt_addr: Option<u64>,
    /// `dma_free_sgt`: the pages; empty for the others.
    pub phys_addrs: Vec<PhysAddr>,
    /// Attributes (empty for `dma_free_sgt`, which prints none).
    pub attrs: Attrs,
}

/// Events the kernel dropped (`CPU:N [LOST M EVENTS]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lost {
    /// 1-based line number.
    pub line: u64,
    /// The CPU whose events were lost.
    pub cpu: u32,
    /// How many, when printed.
    pub events: Option<u64>,
}

/// A swiotlb line of the kernel log.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KernelMessage {
    /// 1-based line number.
    pub line: u64,
    /// The `[ seconds.micros]` prefix, in nanoseconds, when present.
    pub timestamp_ns: Option<u64>,
    /// The device of a device message (`nvme 0000:01:00.0: ...` gives
    /// `0000:01:00.0`).
    pub device: Option<Device>,
    /// What the kernel said.
    pub message: Message,
}

/// The swiotlb messages of the kernel log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// `software IO TLB: mapped [mem START-END] (NMB)`: the default pool
    /// at boot; its size is the `swiotlb=` a replay starts from.
    Mapped {
        /// First byte.
        start: PhysAddr,
        /// Last byte (inclusive, as printed).
        end: PhysAddr,
        /// Size as printed, in MiB.
        megabytes: u64,
    },
    /// `software IO TLB: area num N.`: the number of areas.
    Areas(u32),
    /// `swiotlb buffer is full (sz: N bytes), total N (slots), used N
    /// (slots)` (rate limited: not every failure is logged).
    Full {
        /// Bytes requested.
        size: u64,
        /// Slots of the pool (older kernels print only the size).
        total_slots: Option<u64>,
        /// Slots in use.
        used_slots: Option<u64>,
    },
}
