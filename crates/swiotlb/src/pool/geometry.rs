//! A pool's geometry: slot size, segment, page size and areas, checked
//! once, and how areas are cut.

#![forbid(unsafe_code)]

use super::policy::AreaGeom;
use crate::addr::PhysAddr;
use crate::error::{Error, PoolProblem, Result};

/// Runtime geometry of a pool, and what it does with freed slots.
///
/// The defaults are Linux's: 2 KiB slots (`IO_TLB_SHIFT` 11), 128-slot
/// segments (`IO_TLB_SEGSIZE`, so one mapping is at most 256 KiB), 4 KiB
/// pages, one area, freed slots left as they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
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
    /// Whether every slot of a mapping or coherent allocation is zeroed
    /// when it is unmapped or freed, before the slots are free again: its
    /// alignment padding and the tail of its last slot too, which the
    /// map-time copy never covers. Off by default, as in Linux, where a
    /// freed slot keeps its bytes until the next mapping copies over the
    /// part it uses. With it on, no byte of a finished mapping stays in
    /// the pool for the device or for a later mapping to see, at the price
    /// of writing every freed slot once (`swiotlb bench`, rows
    /// `map_unmap_zero_on_free`; docs/PERFORMANCE.md).
    pub zero_on_free: bool,
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
        zero_on_free: false,
    };

    /// The default geometry with `nareas` areas.
    pub const fn with_areas(nareas: u32) -> Self {
        Self {
            nareas,
            ..Self::DEFAULT
        }
    }

    /// This geometry with slots of `2^shift` bytes.
    pub const fn with_slot_shift(mut self, shift: u32) -> Self {
        self.slot_shift = shift;
        self
    }

    /// This geometry with segments of `slots` slots (the largest mapping).
    pub const fn with_segment(mut self, slots: u32) -> Self {
        self.segment = slots;
        self
    }

    /// This geometry with `nareas` areas wanted.
    pub const fn with_nareas(mut self, nareas: u32) -> Self {
        self.nareas = nareas;
        self
    }

    /// This geometry with pages of `2^shift` bytes.
    pub const fn with_page_shift(mut self, shift: u32) -> Self {
        self.page_shift = shift;
        self
    }

    /// This configuration with freed slots zeroed (`true`) or left as they
    /// are (`false`, the default): see [`PoolConfig::zero_on_free`].
    pub const fn with_zero_on_free(mut self, on: bool) -> Self {
        self.zero_on_free = on;
        self
    }

    /// Whether every field is in range.
    pub(super) const fn is_valid(&self) -> bool {
        self.slot_shift >= 9
            && self.slot_shift <= 16
            && self.segment.is_power_of_two()
            && self.segment <= 1 << 15
            && (self.segment as u64) << self.slot_shift <= 1 << 23
            && self.page_shift >= 9
            && self.page_shift <= 30
    }

    pub(super) fn check(&self) -> core::result::Result<(), PoolProblem> {
        if self.is_valid() {
            Ok(())
        } else {
            Err(PoolProblem::BadGeometry)
        }
    }

    /// The pool's slot count for `len` bytes, `None` if it is zero or more
    /// than the records can index. The geometry must be valid.
    pub(super) const fn slot_count(&self, len: usize) -> Option<u32> {
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
pub(super) const fn area_geom(config: &PoolConfig, nslabs: u32, nareas: u32, i: u32) -> AreaGeom {
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

/// The region checks of every constructor: the pool's slot count and area
/// count for `len` bytes at `phys`.
pub(super) fn geometry(phys: PhysAddr, len: usize, config: &PoolConfig) -> Result<(u32, u32)> {
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

/// Linux's area count: the wanted count rounded up to a power of two, then
/// halved until each area holds a segment (`limit_nareas`, kept a power of
/// two). A pool smaller than one segment has one area.
pub(super) const fn area_count(wanted: u32, nslabs: u32, segment: u32) -> u32 {
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
