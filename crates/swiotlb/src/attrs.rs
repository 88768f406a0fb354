//! Mapping attributes: Linux `DMA_ATTR_*` flags that change how one mapping
//! is made.

#![forbid(unsafe_code)]

use core::ops::{BitOr, BitOrAssign};

/// A set of mapping attributes.
///
/// A plain bit set rather than an enum so that attributes combine
/// (`Attrs::SKIP_CPU_SYNC | Attrs::NO_WARN`) and new ones can be added
/// without breaking callers. Bits this version does not know are kept and
/// ignored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Attrs(u32);

impl Attrs {
    /// No attributes.
    pub const NONE: Self = Self(0);
    /// Skip the copy back to the CPU on unmap and the copies of explicit
    /// syncs the caller does itself (Linux `DMA_ATTR_SKIP_CPU_SYNC`). It
    /// never skips the map-time copy: that copy keeps stale slot data from
    /// reaching a device (CVE-2022-0854).
    pub const SKIP_CPU_SYNC: Self = Self(1 << 0);
    /// Do not count or report a failed mapping as a warning (Linux
    /// `DMA_ATTR_NO_WARN`): for callers that retry or have a fallback. The
    /// failure is still returned and still counted by reason.
    pub const NO_WARN: Self = Self(1 << 1);
    /// The caller may sleep (Linux `DMA_ATTR_MAY_SLEEP`): a growing pool may
    /// allocate memory and run platform hooks on this call's path.
    pub const MAY_SLEEP: Self = Self(1 << 2);

    /// The raw bits.
    #[inline]
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Attributes from raw bits; unknown bits are kept.
    #[inline]
    pub const fn from_bits(bits: u32) -> Self {
        Self(bits)
    }

    /// Whether every attribute of `other` is set in `self`.
    #[inline]
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// `self` with the attributes of `other` added.
    #[inline]
    pub const fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

impl BitOr for Attrs {
    type Output = Self;
    #[inline]
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl BitOrAssign for Attrs {
    #[inline]
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}
