//! Map, unmap and sync: the streaming DMA API, at two levels.
//!
//! - The **safe level** ([`Pool::map`]) takes ownership of a buffer and
//!   returns a [`Mapping`] that holds a raw pointer and a length, never a
//!   live `&mut`, while the device owns the memory (the Tock DMA soundness
//!   lesson); [`Mapping::unmap`] gives the buffer back.
//! - The **raw level** ([`Pool::map_raw`] and friends) takes physical
//!   addresses and CPU pointers, for kernels that manage their own memory.
//!   It is `unsafe`, with its contract written on each function.
//!
//! Both follow Linux's semantics (`dma_direct_map_page`, `swiotlb_map`,
//! `swiotlb_tbl_map_single`, `swiotlb_tbl_unmap_single`,
//! `swiotlb_sync_single_for_{cpu,device}`):
//! - a buffer the device reaches (judged on both addresses) and that is not
//!   forced to bounce is mapped directly;
//! - otherwise it is bounced, and the map copies the original into the
//!   slots **for every direction**, so a device that writes only part of a
//!   from-device buffer never leaves stale slot bytes of an earlier mapping
//!   in the original (CVE-2022-0854);
//! - `sync_for_device` copies only for to-device and bidirectional
//!   mappings; unmap and `sync_for_cpu` copy back only for from-device and
//!   bidirectional ones, and `SKIP_CPU_SYNC` skips the unmap copy-back;
//! - a sync may cover any sub-range of a mapping; one that runs past it is
//!   an error and copies nothing;
//! - the bounce address must itself be reachable by the device, or the map
//!   fails and nothing stays mapped.

// The files: `raw.rs`, the raw API on `Pool`; `sg.rs`, scatter-gather
// lists, raw and safe, with the two walks every pool, tlb and platform
// shares; `buffer.rs`, `DmaBuffer` and the taken-apart `RawBuffer`;
// `mapping.rs`, the safe `Mapping` and `Pool::map`. This file has no
// unsafe code but no `forbid(unsafe_code)` either: the lint would reach
// the submodules, which have.
mod buffer;
mod mapping;
mod raw;
mod sg;

pub(crate) use buffer::RawBuffer;
pub use buffer::{DmaBuffer, MapFailed};
pub use mapping::Mapping;
#[cfg(feature = "alloc")]
pub(crate) use mapping::{Held, Owner};
#[cfg(feature = "alloc")]
pub(crate) use sg::map_sg_buffers_by;
#[cfg(feature = "alloc")]
pub(crate) use sg::{map_sg_by, unmap_sg_by};

use crate::addr::{DmaAddr, PhysAddr};
use crate::device::Device;
use crate::error::{Error, Result};
#[cfg(doc)]
use crate::pool::Pool;
use crate::translate::Translate;

/// Options of one bounce beyond its attributes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MapOptions {
    /// Start alignment of the allocation (Linux's `alloc_align_mask`
    /// argument of `swiotlb_tbl_map_single`): `2^n - 1`, or `0` for none.
    pub alloc_align_mask: u64,
    /// The area to search first; `None` uses the installed [`CpuHint`]
    /// (area 0 if none), as Linux starts at the CPU's own area.
    pub area_hint: Option<usize>,
}

impl MapOptions {
    /// No alignment beyond the device's, the calling thread's area first.
    pub const fn new() -> Self {
        Self {
            alloc_align_mask: 0,
            area_hint: None,
        }
    }

    /// These options with allocation alignment `mask` (`2^n - 1`).
    pub const fn with_alloc_align_mask(mut self, mask: u64) -> Self {
        self.alloc_align_mask = mask;
        self
    }

    /// These options searching area `area` first.
    pub const fn with_area_hint(mut self, area: usize) -> Self {
        self.area_hint = Some(area);
        self
    }
}

/// The CPU a map runs on, to pick the area it searches first: Linux starts
/// at the CPU's own area (`raw_smp_processor_id()`), so CPUs mapping at
/// once take different locks. A kernel or paravisor installs its own with
/// [`set_cpu_hint`]; a hosted program installs one of `swiotlb-host`'s:
/// `swiotlb_host::RunningCpu` (the CPU the thread runs on, as Linux) or
/// `swiotlb_host::ThreadHint` (each thread its own area in turn). Without
/// one, every map starts at area 0: concurrent maps then contend for the
/// first area's lock before they spread to the next ones.
pub trait CpuHint: Send + Sync {
    /// The running CPU's number (any value: it is taken modulo the area
    /// count, a power of two).
    fn cpu(&self) -> usize;
}

/// The installed [`CpuHint`], if any.
static CPU_HINT: spin::Once<&'static dyn CpuHint> = spin::Once::new();

/// Installs the hint every map without an explicit
/// [`MapOptions::area_hint`] uses from now on. It can be set once, before
/// or after pools exist; returns `false` (and changes nothing) if one was
/// already installed.
pub fn set_cpu_hint(hint: &'static dyn CpuHint) -> bool {
    let mut set = false;
    CPU_HINT.call_once(|| {
        set = true;
        hint
    });
    set
}

/// The area the calling thread starts its searches in: the installed
/// [`CpuHint`], else area 0.
#[inline]
fn thread_hint() -> usize {
    match CPU_HINT.get() {
        Some(hint) => hint.cpu(),
        None => 0,
    }
}

/// An unmap or sync of device address `dma` (physical `phys`) that no pool
/// holds: nothing to do for a direct mapping (Linux's dma-direct does
/// nothing either), [`Error::NotMapped`] for an address the device could
/// only have been given by a bounce, such as a second unmap of a mapping
/// whose transient pool is gone.
pub(crate) fn outside<T: Translate>(
    dev: &Device<T>,
    dma: DmaAddr,
    phys: PhysAddr,
    size: usize,
) -> Result {
    if dev.may_be_direct(phys, size) {
        Ok(())
    } else {
        Err(Error::NotMapped { dma })
    }
}

/// Whether a raw map may hand the device the original's own address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    not(feature = "alloc"),
    expect(dead_code, reason = "only a restricted tlb (alloc) always bounces")
)]
pub(crate) enum Bouncing {
    /// Directly when the device reaches the original and is not forced to
    /// bounce (Linux's dma-direct).
    IfNeeded,
    /// Always through the pool: a restricted tlb's devices.
    Always,
}

/// One entry of a raw scatter-gather list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SgEntry {
    /// Physical address of the segment.
    pub phys: PhysAddr,
    /// CPU address of the segment.
    pub cpu: *mut u8,
    /// Length in bytes.
    pub len: usize,
    /// Set by [`Pool::map_sg_raw`]: the device address of the segment.
    pub dma: DmaAddr,
}
