//! The direction of a DMA transfer, which decides which copies a bounce
//! mapping makes.

#![forbid(unsafe_code)]

/// Which way data moves between the CPU's buffer and the device.
///
/// Linux `enum dma_data_direction` without `DMA_NONE`, which no mapping may
/// use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The device reads the buffer (`DMA_TO_DEVICE`).
    ToDevice,
    /// The device writes the buffer (`DMA_FROM_DEVICE`).
    FromDevice,
    /// Both (`DMA_BIDIRECTIONAL`).
    Bidirectional,
}

impl Direction {
    /// Whether `sync_for_device` copies CPU data into the bounce slots
    /// (Linux `swiotlb_sync_single_for_device`: to-device and bidirectional).
    #[inline]
    pub const fn copies_to_device(self) -> bool {
        matches!(self, Direction::ToDevice | Direction::Bidirectional)
    }

    /// Whether `unmap` and `sync_for_cpu` copy device data back into the
    /// original (Linux: from-device and bidirectional).
    #[inline]
    pub const fn copies_to_cpu(self) -> bool {
        matches!(self, Direction::FromDevice | Direction::Bidirectional)
    }

    /// The short name used by the command line and traces: `to`, `from`,
    /// `bidi`.
    pub const fn short_name(self) -> &'static str {
        match self {
            Direction::ToDevice => "to",
            Direction::FromDevice => "from",
            Direction::Bidirectional => "bidi",
        }
    }

    /// Parses a short name (`to`, `from`, `bidi`) or a Linux trace name
    /// (`DMA_TO_DEVICE`, `DMA_FROM_DEVICE`, `DMA_BIDIRECTIONAL`).
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "to" | "DMA_TO_DEVICE" => Some(Direction::ToDevice),
            "from" | "DMA_FROM_DEVICE" => Some(Direction::FromDevice),
            "bidi" | "DMA_BIDIRECTIONAL" => Some(Direction::Bidirectional),
            _ => None,
        }
    }
}
