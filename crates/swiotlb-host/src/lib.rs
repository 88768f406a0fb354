//! Host-side parts of [swiotlb](swiotlb): the memory a device in another
//! process can see, and the conveniences of a hosted (`std`) program.
//!
//! - [`SharedMemory`]: pool memory in a memfd whose size is sealed, mapped
//!   here and handed to another process (a vhost-user device, a device VM)
//!   as a file descriptor.
//! - [`MemfdProvider`]: a growth [`Provider`](swiotlb::provider::Provider)
//!   over memfd + mmap, so that every pool a growing tlb adds is shareable
//!   too; [`RegionListener`]s (a vhost-user transport) are told of each
//!   region before any address in it is handed out, and of its removal
//!   before its memory goes.
//!
//! The process's own virtual addresses stand for physical addresses: a
//! region's "physical" and device address is the address it is mapped at
//! here (identity), as a user-space device stack with no IOMMU sees it.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use swiotlb::{Device, Direction, DmaMask, GrowConfig, Growth, IoTlb, TlbKind};
//! use swiotlb_host::MemfdProvider;
//!
//! let provider = Arc::new(MemfdProvider::new("swiotlb-doc"));
//! let growth = Growth::new(provider.clone(), GrowConfig::new(256 << 10, 1 << 20));
//! let tlb: IoTlb = IoTlb::growing(TlbKind::Default, growth).unwrap();
//! // The first pool is a memfd another process could map.
//! let regions = provider.regions();
//! assert_eq!(regions.len(), 1);
//! assert!(regions[0].len >= 256 << 10);
//! let dev = Device::new(DmaMask::BITS_64).with_force_bounce();
//! let m = tlb.map(&dev, vec![5u8; 4096], Direction::ToDevice).unwrap();
//! let dma = m.dma_addr().0;
//! assert!(regions[0].contains(dma, 4096));
//! m.unmap();
//! ```

#![deny(missing_docs)]

mod memfd;

pub use memfd::{MemfdProvider, RegionInfo, RegionListener, SharedMemory};
