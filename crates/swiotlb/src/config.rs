//! The `swiotlb=` grammar (placeholder constants).
/// log2 of the slot size.
pub const IO_TLB_SHIFT: u32 = 11;
/// Slots per segment.
pub const IO_TLB_SEGSIZE: u32 = 128;
