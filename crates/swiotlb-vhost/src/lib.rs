//! A [virtio-drivers](virtio_drivers) [`Transport`] that drives a
//! vhost-user device in another process, this process being the frontend:
//! swiotlb's shared pools ([`swiotlb_host::SharedMemory`],
//! [`swiotlb_host::MemfdProvider`]) are the device's memory table, so the
//! driver's bounce buffers are the only memory the device can reach.
//!
//! - [`VhostUserTransport`]: the transport. Device type and queue size are
//!   given to [`connect`](VhostUserTransport::connect), as vhost-user
//!   cannot report them.
//! - [`DeviceHandle`]: what a user keeps once a driver owns the transport:
//!   [`wait_used`](DeviceHandle::wait_used) blocks on the call eventfd (no
//!   spinning), and as a [`RegionListener`](swiotlb_host::RegionListener)
//!   it adds each pool a growing tlb adds to the device (`ADD_MEM_REG`)
//!   before any address in it is handed out, and removes it
//!   (`REM_MEM_REG`) before it goes.
//! - [`device::QemuStorageDaemon`]: a qemu-storage-daemon vhost-user-blk
//!   export owned by a guard, for tests and demos.
//!
//! # Usage
//!
//! ```no_run
//! use std::time::Duration;
//! use swiotlb_host::SharedMemory;
//! use swiotlb_vhost::VhostUserTransport;
//! use virtio_drivers::transport::{DeviceType, Transport};
//!
//! let mem = SharedMemory::new("dma", 4 << 20)?;
//! // Identity: the device sees the memory at its address here.
//! let region = mem.info(mem.as_ptr().as_ptr() as u64);
//! let transport = VhostUserTransport::connect(
//!     "/run/vhost-user-blk.sock".as_ref(),
//!     DeviceType::Block,
//!     256,
//!     &[region],
//!     Duration::from_secs(5),
//! )?;
//! let handle = transport.handle();
//! // Give `transport` to `VirtIOBlk::<MyHal, _>::new`, whose Hal hands
//! // out DMA addresses inside `mem`; wait with `handle.wait_used(0, ..)`.
//! # drop(handle);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Growth
//! A device that offers `VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS` takes
//! new regions while it runs (qemu-storage-daemon offers it, with 509
//! slots). A device without the feature makes its tlb fixed: its handle
//! refuses every added region, so the growth that asked for it fails.
//!
//! # Failure
//! The first socket error, reply timeout or hang-up is latched: the driver
//! sees `DEVICE_NEEDS_RESET`, config reads fail, kicks and ring set-ups
//! are no-ops, and nothing panics or blocks past the connect timeout.
//!
//! A device given up on (a deadline passed, it failed) is reset first
//! ([`DeviceHandle::reset`]: its rings stopped, or its connection shut
//! down); only then are the requests in flight handed back to the driver
//! ([`DeviceHandle::retire`]) and their mappings unmapped, so a device can
//! never write a buffer after it was given back. [`blk::run`] does both.
//!
//! # Safety and correctness
//! The transport passes addresses; it touches the driver's memory only in
//! the used ring: reading the used length of an entry the driver is about
//! to take ([`DeviceHandle::check_used`]), and, after a reset, putting the
//! requests in flight on it ([`DeviceHandle::retire`]), both `unsafe fn`
//! whose callers promise the ring is alive. What the device may touch is
//! exactly the memory table, whose regions the caller promises stay mapped
//! until removed (the [`RegionListener`](swiotlb_host::RegionListener)
//! contract). The other `unsafe` block borrows a call eventfd's descriptor
//! for `poll(2)` while the eventfd is held.

#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    missing_docs
)]

pub mod blk;
pub mod device;
mod error;
mod handle;
mod transport;

pub use error::TransportError;
pub use handle::{DeviceHandle, Event, Reset, UsedLenTooLarge};
pub use transport::{default_config_len, Counters, VhostUserTransport, BLK_CONFIG_LEN};
pub use virtio_drivers::transport::Transport;
