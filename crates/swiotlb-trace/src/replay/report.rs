//! What a replay reports.

use serde::Serialize;

use super::input::Malformed;
use super::pair::Unpaired;

/// The allocation policy a replay drives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Linux's next-fit, slot for slot (`swiotlb::NextFit`).
    #[default]
    NextFit,
    /// Our fast policy (`swiotlb::Fast`).
    Fast,
}

impl Policy {
    /// `nextfit` or `fast`.
    pub const fn name(self) -> &'static str {
        match self {
            Policy::NextFit => "nextfit",
            Policy::Fast => "fast",
        }
    }
}

/// What the trace can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Era {
    /// `swiotlb_bounced` with the `dma_map_*` events (Linux 6.12 on): when
    /// every bounce was taken and released.
    Full,
    /// Only `swiotlb_bounced` (kernels before 6.12, or the `dma` events
    /// not enabled): how much bounced, but not when it was released.
    BouncedOnly,
    /// `dma_map_*` events without `swiotlb_bounced`: bounces are told by
    /// their address falling in the pool (known from the kernel log).
    MapsOnly,
    /// No swiotlb or DMA mapping events at all.
    Empty,
}

/// Where the pool's geometry came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GeometrySource {
    /// `--nslabs` / `--nareas`.
    Options,
    /// The kernel log (`software IO TLB: mapped [mem ...]`, `area num N.`).
    Dmesg,
    /// Linux's defaults: 32768 slots (64 MiB), one area per CPU of the
    /// trace.
    Default,
}

/// A `tracing_mark_write` line and the pool at it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Marker {
    /// The text written to `trace_marker`.
    pub text: String,
    /// Its line in the trace.
    pub line: u64,
    /// Slots in use at the marker.
    pub io_tlb_used: u64,
    /// What the kernel would report at the next marker (or the end) had 0
    /// been written to `io_tlb_used_hiwater` at this one: the highest
    /// `io_tlb_used` an allocation reached in between, 0 if none.
    pub io_tlb_used_hiwater: u64,
}

/// Failed maps of the kernel and of the replay, side by side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Compared {
    /// Both failed the map.
    pub both: u64,
    /// The kernel failed it, the replay did not.
    pub only_kernel: u64,
    /// The replay failed it, the kernel did not.
    pub only_replay: u64,
}

/// Bounce addresses of the replay against the kernel's, when the pool
/// base is known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Placement {
    /// Bounces both placed whose kernel address the trace shows.
    pub compared: u64,
    /// Of those, placed at the kernel's address.
    pub exact: u64,
    /// Bounces the kernel placed outside its boot pool: in a pool it grew
    /// (`CONFIG_SWIOTLB_DYNAMIC`) or a restricted pool, which the replay
    /// does not model.
    pub outside_pool: u64,
}

/// One device's part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DeviceReport {
    /// `dev_name()`.
    pub name: String,
    /// The `min_align_mask` the replay used.
    pub min_align_mask: u64,
    /// `inferred`, `option` or `none` (no bounced map showed one).
    pub min_align_source: &'static str,
    /// Offset from the CPU's address of an original to the device's
    /// (`dev_addr - phys_addr`; the encryption bit on AMD SEV).
    pub dev_addr_offset: Option<u64>,
    /// Bounces replayed.
    pub mappings: u64,
    /// Bytes bounced.
    pub bytes: u64,
    /// Most slots the device held at once.
    pub hiwater: u64,
    /// Failed maps in the replay.
    pub failures: u64,
    /// Failed bounces in the kernel.
    pub kernel_failures: u64,
}

/// What a growing tlb did over the trace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Growth {
    /// Slots of the first pool.
    pub start_slots: u64,
    /// Slots of each pool added.
    pub grow_by_slots: u64,
    /// The most slots it may hold.
    pub max_slots: u64,
    /// How long a grown pool stays empty before it is given back, in
    /// trace milliseconds.
    pub idle_ms: u64,
    /// Pools added and given back, in order.
    pub events: Vec<GrowthEvent>,
    /// The most slots held by all pools at once.
    pub peak_slots: u64,
    /// Pools added.
    pub pools_added: u64,
    /// Pools given back.
    pub pools_removed: u64,
}

/// A pool added or given back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct GrowthEvent {
    /// Trace time since the first event, in nanoseconds.
    pub t_ns: u64,
    /// The trace line that caused it (an added pool) or 0.
    pub line: u64,
    /// `added` or `removed`.
    pub what: &'static str,
    /// Slots of that pool.
    pub slots: u64,
    /// Slots of all pools after it.
    pub total_slots: u64,
}

/// Used slots over trace time, for pictures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timeline {
    /// `(nanoseconds since the first event, io_tlb_used)` after every
    /// change.
    pub points: Vec<(u64, u64)>,
    /// When the replay failed a map.
    pub failures: Vec<u64>,
    /// When each marker was written, with its text.
    pub markers: Vec<(u64, String)>,
    /// The first pool's slots at the replay's peak: when, how many used,
    /// and each slot held (`true`) or free.
    pub peak: Option<(u64, u64, Vec<bool>)>,
    /// Total slots over time when the tlb grows: `(time, slots)` at each
    /// change, starting with the first pool.
    pub pool_slots: Vec<(u64, u64)>,
}

/// The result of [`replay`](super::replay).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Report {
    /// Lines read.
    pub lines: u64,
    /// Trace events parsed.
    pub events: u64,
    /// What the trace can tell.
    pub era: Era,
    /// Bounces replayed (one per bounced map or scatter-gather entry).
    pub mappings: u64,
    /// Bytes bounced.
    pub bytes: u64,
    /// The policy driven.
    pub policy: Policy,
    /// Slots in the pool.
    pub io_tlb_nslabs: u64,
    /// Areas of the pool.
    pub io_tlb_nareas: u32,
    /// Where the geometry came from.
    pub geometry_source: GeometrySource,
    /// The pool's base address, when the kernel log gives it.
    pub pool_base: Option<u64>,
    /// Linux's `io_tlb_used_hiwater` for the trace: the most slots held
    /// at once, pool-wide. `None` when the trace cannot tell (see
    /// [`Era::BouncedOnly`]).
    pub io_tlb_used_hiwater: Option<u64>,
    /// Slots still held at the end of the trace.
    pub io_tlb_used_at_end: u64,
    /// Maps the replay failed.
    pub failures: u64,
    /// Bounced maps the kernel failed.
    pub kernel_failures: u64,
    /// "swiotlb buffer is full" messages in the kernel log (rate limited).
    pub kernel_full_messages: Option<u64>,
    /// Failures side by side.
    pub failures_compared: Compared,
    /// Bounce addresses against the kernel's, when the pool base is known.
    pub placed_exactly: Option<Placement>,
    /// One entry per `tracing_mark_write` line.
    pub markers: Vec<Marker>,
    /// Per device that bounced (or whose bounce the kernel failed).
    pub per_device: Vec<DeviceReport>,
    /// What did not pair.
    pub unpaired: Unpaired,
    /// Lines that did not parse.
    pub malformed: Malformed,
    /// A growing tlb's story, when the replay grew.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub growth: Option<Growth>,
    /// Plain sentences about what the replay could and could not do.
    pub notes: Vec<String>,
    /// Used slots over time, when asked for.
    #[serde(skip)]
    pub timeline: Option<Timeline>,
}
