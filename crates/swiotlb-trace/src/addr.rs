//! Addresses as the kernel prints them, as newtypes so that a device
//! address is never taken for a physical one.

use core::fmt;

/// A device (bus) address: what `dma_map_*` returns and a device sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DmaAddr(pub u64);

/// A CPU physical address: the original buffer of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PhysAddr(pub u64);

impl DmaAddr {
    /// Linux `DMA_MAPPING_ERROR` (all ones): the address a failed map
    /// returns, and what `dma_map_page` traces when it fails.
    pub const MAPPING_ERROR: DmaAddr = DmaAddr(u64::MAX);

    /// The address as a number.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Whether this is [`DmaAddr::MAPPING_ERROR`].
    pub const fn is_mapping_error(self) -> bool {
        self.0 == u64::MAX
    }
}

impl PhysAddr {
    /// The address as a number.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for DmaAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::Display for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}
