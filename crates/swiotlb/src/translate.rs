//! Address translation between the CPU and a device: `phys_to_dma`,
//! `dma_to_phys` and `dma_capable`, judged on both addresses.
//!
//! Linux learnt from Xen that reachability cannot always be judged on the
//! device address alone: a Xen guest's physically contiguous buffer may sit
//! on machine frames that are not contiguous, and only the physical address
//! tells (Ian Campbell, "swiotlb cleanup", 2009). So [`Translate::dma_capable`]
//! receives both.

#![forbid(unsafe_code)]

use crate::addr::{DmaAddr, PhysAddr};

/// The address limits of one device, as [`Translate::dma_capable`] sees
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The highest device address the device can generate (its DMA mask).
    pub dma_mask: u64,
    /// The highest device address the bus between device and memory
    /// carries (Linux `bus_dma_limit`); `0` means no bus limit.
    pub bus_limit: u64,
}

impl Limits {
    /// The lower of the mask and the bus limit (Linux `min_not_zero`).
    #[inline]
    pub const fn highest(&self) -> u64 {
        if self.bus_limit != 0 && self.bus_limit < self.dma_mask {
            self.bus_limit
        } else {
            self.dma_mask
        }
    }
}

/// How a platform translates between CPU physical and device addresses.
///
/// None of these methods is trusted for memory safety: the core copies only
/// through CPU pointers it owns, and every device address it receives back
/// is checked against its pools. A wrong translation makes a device reach
/// the wrong memory, which is the platform's business, not Rust's.
pub trait Translate: Send + Sync {
    /// The device address of a CPU physical address (Linux `phys_to_dma`).
    fn phys_to_dma(&self, phys: PhysAddr) -> DmaAddr;

    /// The CPU physical address of a device address (Linux `dma_to_phys`).
    fn dma_to_phys(&self, dma: DmaAddr) -> PhysAddr;

    /// Whether the device can reach `size` bytes at `phys`, whose device
    /// address is `dma` (Linux `dma_capable`, with the physical address
    /// added as Xen needs). The default accepts when the whole range lies at
    /// or below the lower of the DMA mask and the bus limit.
    fn dma_capable(&self, limits: &Limits, phys: PhysAddr, dma: DmaAddr, size: usize) -> bool {
        let _ = phys;
        range_below(dma.0, size, limits.highest())
    }

    /// The CPU physical address of a CPU pointer, used by the safe API to
    /// decide whether a buffer is reachable directly. The default is the
    /// identity, right for identity-mapped kernels and for user-space
    /// simulations where "physical" means "virtual".
    fn virt_to_phys(&self, ptr: *const u8) -> PhysAddr {
        PhysAddr(ptr as usize as u64)
    }
}

/// Whether `[start, start + size)` ends at or below `highest`, without
/// overflow. A zero-sized range is judged at `start`.
#[inline]
pub const fn range_below(start: u64, size: usize, highest: u64) -> bool {
    let last = match start.checked_add(if size == 0 { 0 } else { size as u64 - 1 }) {
        Some(l) => l,
        None => return false,
    };
    last <= highest
}

/// The identity translation: device addresses equal physical addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Identity;

impl Translate for Identity {
    #[inline]
    fn phys_to_dma(&self, phys: PhysAddr) -> DmaAddr {
        DmaAddr(phys.0)
    }

    #[inline]
    fn dma_to_phys(&self, dma: DmaAddr) -> PhysAddr {
        PhysAddr(dma.0)
    }
}

/// A bus window: device address = physical address + `offset` (wrapping),
/// as on platforms whose DMA bus sees memory at a different base (Linux
/// `dma_range_map` with one range).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offset {
    /// Added to a physical address to get the device address.
    pub offset: u64,
}

impl Offset {
    /// A window where physical address `phys` appears at device address
    /// `dma`.
    pub const fn new(phys: PhysAddr, dma: DmaAddr) -> Self {
        Self {
            offset: dma.0.wrapping_sub(phys.0),
        }
    }
}

impl Translate for Offset {
    #[inline]
    fn phys_to_dma(&self, phys: PhysAddr) -> DmaAddr {
        DmaAddr(phys.0.wrapping_add(self.offset))
    }

    #[inline]
    fn dma_to_phys(&self, dma: DmaAddr) -> PhysAddr {
        PhysAddr(dma.0.wrapping_sub(self.offset))
    }
}

impl<T: Translate + ?Sized> Translate for &T {
    fn phys_to_dma(&self, phys: PhysAddr) -> DmaAddr {
        (**self).phys_to_dma(phys)
    }
    fn dma_to_phys(&self, dma: DmaAddr) -> PhysAddr {
        (**self).dma_to_phys(dma)
    }
    fn dma_capable(&self, limits: &Limits, phys: PhysAddr, dma: DmaAddr, size: usize) -> bool {
        (**self).dma_capable(limits, phys, dma, size)
    }
    fn virt_to_phys(&self, ptr: *const u8) -> PhysAddr {
        (**self).virt_to_phys(ptr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_offset() {
        assert_eq!(Identity.phys_to_dma(PhysAddr(0x1234)), DmaAddr(0x1234));
        let w = Offset::new(PhysAddr(0x8000_0000), DmaAddr(0x1000));
        assert_eq!(w.phys_to_dma(PhysAddr(0x8000_2000)), DmaAddr(0x3000));
        assert_eq!(w.dma_to_phys(DmaAddr(0x3000)), PhysAddr(0x8000_2000));
    }

    #[test]
    fn capable_uses_lower_limit() {
        let l = Limits {
            dma_mask: u64::MAX,
            bus_limit: 0xffff_ffff,
        };
        assert!(Identity.dma_capable(&l, PhysAddr(0), DmaAddr(0xffff_f000), 0x1000));
        assert!(!Identity.dma_capable(&l, PhysAddr(0), DmaAddr(0xffff_f000), 0x1001));
        assert!(!range_below(u64::MAX, 2, u64::MAX));
    }
}
