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
//! - [`HeapProvider`]: a growth provider of zeroed heap memory at
//!   identity, for tests, simulations and user-space stacks.
//! - [`StdClock`]: the standard library's monotonic clock as a tlb's
//!   [`Clock`](swiotlb::tlb::Clock).
//! - [`Maintainer`]: a thread calling [`IoTlb::maintain`](swiotlb::IoTlb::maintain)
//!   periodically, and at once when a request asks for growth.
//! - [`RunningCpu`] and [`ThreadHint`]: [`CpuHint`](swiotlb::CpuHint)s
//!   for [`swiotlb::set_cpu_hint`], so that maps on different CPUs (or
//!   threads) start in different areas of a pool.
//!
//! Why a crate of its own: the core (`swiotlb`) is `no_std` at heart and
//! keeps only the traits ([`Provider`](swiotlb::provider::Provider),
//! [`Clock`](swiotlb::tlb::Clock), [`CpuHint`](swiotlb::CpuHint)) and the
//! hooks a background maintainer needs
//! ([`IoTlb::growth_wanted`](swiotlb::IoTlb::growth_wanted),
//! [`IoTlb::set_growth_waker`](swiotlb::IoTlb::set_growth_waker)); what
//! needs threads, the heap allocator's API or the operating system lives
//! here.
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

//!
//! # Safety and correctness
//!
//! Unsafe code is confined to the two memory modules, each block argued
//! at the block:
//! - `memfd`: mapping and unmapping a sealed memfd, and the provider over
//!   it;
//! - `heap`: allocating, aligning inside and freeing heap regions.
//!
//! The other modules forbid unsafe code. miri runs the heap module's
//! tests (and the core's heap-backed integration tests through it,
//! `ci/miri.sh`); it cannot run memfd, mmap or `sched_getcpu`, whose tests
//! it skips.

#![deny(missing_docs)]

mod clock;
mod heap;
mod hint;
mod maintainer;
mod memfd;

pub use clock::StdClock;
pub use heap::HeapProvider;
pub use hint::{RunningCpu, ThreadHint};
pub use maintainer::Maintainer;
pub use memfd::{
    MemfdProvider, RegionInfo, RegionListener, SharedBuffer, SharedMemory, Subscription,
};
