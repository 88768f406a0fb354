//! Address newtypes: a CPU physical address, a device (bus) address and a
//! device's DMA mask are different things and never mix silently.

#![forbid(unsafe_code)]

use core::fmt;
use core::ops::{Add, Sub};

/// A CPU physical address: what the CPU's MMU maps and what Linux calls
/// `phys_addr_t`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[repr(transparent)]
pub struct PhysAddr(pub u64);

/// A device (bus) address: what a device puts on the bus to reach memory,
/// Linux's `dma_addr_t`. It equals the physical address only under an
/// identity translation.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[repr(transparent)]
pub struct DmaAddr(pub u64);

macro_rules! addr_impls {
    ($t:ident, $prefix:literal) => {
        impl $t {
            /// The address as a plain integer.
            #[inline]
            pub const fn as_u64(self) -> u64 {
                self.0
            }

            /// `self + off`, or `None` on overflow.
            #[inline]
            pub const fn checked_add(self, off: u64) -> Option<Self> {
                match self.0.checked_add(off) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }
        }

        impl Add<u64> for $t {
            type Output = Self;
            #[inline]
            fn add(self, rhs: u64) -> Self {
                Self(self.0 + rhs)
            }
        }

        impl Sub<$t> for $t {
            type Output = u64;
            #[inline]
            fn sub(self, rhs: $t) -> u64 {
                self.0 - rhs.0
            }
        }

        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }

        impl fmt::LowerHex for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

addr_impls!(PhysAddr, "PhysAddr");
addr_impls!(DmaAddr, "DmaAddr");

/// The highest device address a device can generate: Linux's
/// `DMA_BIT_MASK(n)`, always of the form `2^n - 1`.
///
/// # Invariants
/// The inner value is `2^n - 1` for some `n` in `1..=64`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DmaMask(u64);

impl DmaMask {
    /// A 24-bit mask (ISA-era devices).
    pub const BITS_24: Self = Self::new(24);
    /// A 32-bit mask: the classic reason for a low bounce pool.
    pub const BITS_32: Self = Self::new(32);
    /// A 64-bit mask: the device reaches every address.
    pub const BITS_64: Self = Self::new(64);

    /// The mask of a device that drives `bits` address lines.
    ///
    /// # Panics
    /// If `bits` is 0 or more than 64; in const context this is a compile
    /// error. Use [`DmaMask::try_new`] for a value read at run time.
    pub const fn new(bits: u32) -> Self {
        match Self::try_new(bits) {
            Some(m) => m,
            None => panic!("DMA mask width must be 1..=64 bits"),
        }
    }

    /// The mask of a device that drives `bits` address lines, or `None` if
    /// `bits` is not in `1..=64`.
    pub const fn try_new(bits: u32) -> Option<Self> {
        if bits == 0 || bits > 64 {
            return None;
        }
        // INVARIANT: 2^bits - 1 for bits in 1..=64.
        Some(Self(if bits == 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        }))
    }

    /// A mask from its value; `None` unless it is `2^n - 1` with `n >= 1`.
    pub const fn from_value(value: u64) -> Option<Self> {
        if value != 0 && value & value.wrapping_add(1) == 0 {
            Some(Self(value))
        } else {
            None
        }
    }

    /// The highest reachable address.
    #[inline]
    pub const fn value(self) -> u64 {
        self.0
    }

    /// The number of address bits.
    #[inline]
    pub const fn bits(self) -> u32 {
        64 - self.0.leading_zeros()
    }
}

impl fmt::Debug for DmaMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DmaMask({} bits)", self.bits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(DmaMask::BITS_32.value(), 0xffff_ffff);
        assert_eq!(DmaMask::BITS_64.value(), u64::MAX);
        assert_eq!(DmaMask::new(40).bits(), 40);
        assert_eq!(DmaMask::try_new(0), None);
        assert_eq!(DmaMask::try_new(65), None);
        assert_eq!(DmaMask::from_value(0xfff), Some(DmaMask::new(12)));
        assert_eq!(DmaMask::from_value(0xf0f), None);
        assert_eq!(DmaMask::from_value(0), None);
    }

    #[test]
    fn formatting() {
        assert_eq!(format!("{:?}", PhysAddr(0x1000)), "PhysAddr(0x1000)");
        assert_eq!(format!("{}", DmaAddr(0x20)), "0x20");
        assert_eq!(PhysAddr(10) - PhysAddr(4), 6);
        assert_eq!(PhysAddr(u64::MAX).checked_add(1), None);
    }
}
