//! [`virtio_drivers::Hal`] over a [`swiotlb::Platform`]: every buffer a
//! virtio driver shares with its device bounces through the tlb that
//! serves the device, as Linux's dma-direct does for a restricted or
//! confidential-VM device.
//!
//! virtio-drivers asks its `Hal` for four things: coherent pages for the
//! rings (`dma_alloc`, `dma_dealloc`), and a device address for each
//! buffer it queues (`share`) until the device is done with it
//! (`unshare`). This crate answers them with the swiotlb core:
//!
//! - `share` maps the buffer through the [`Platform`](swiotlb::Platform)
//!   for the bound [`Device`](swiotlb::Device) (`map_raw_with_attrs`):
//!   a bounce into the device's tlb, copied in at map time whatever the
//!   direction (Linux, CVE-2022-0854), or the buffer's own address for a
//!   device with no restricted tlb that reaches it and is not forced to
//!   bounce. The buffer's physical address is the device translation's
//!   [`virt_to_phys`](swiotlb::Translate::virt_to_phys) of its CPU
//!   address: the identity by default, right inside one process.
//! - `unshare` copies the whole mapped length back for `DeviceToDriver`
//!   and `Both` buffers (the trait does not say how much the device
//!   wrote), nothing for `DriverToDevice`, then gives the slots back.
//! - `dma_alloc` gives zeroed, page-aligned memory: for a device bound to
//!   a restricted tlb, a coherent allocation of that tlb's first pool
//!   (Linux takes coherent memory from swiotlb only for restricted pools;
//!   at most one segment, 64 pages with the default geometry); for any
//!   other device, pages from the binding's [`PageSource`] (a
//!   [`Provider`](swiotlb::provider::Provider) and its
//!   [`MemoryHooks`](swiotlb::provider::MemoryHooks)), or failure if it
//!   has none. Failure is `(0, NonNull::dangling())`, as the trait
//!   expects; no pool ever hands out device address 0 (the core refuses a
//!   pool a device would see there, `Error::DmaZeroInPool`).
//! - `dma_dealloc` returns 0, or [`DEALLOC_NOT_ALLOCATED`] /
//!   [`DEALLOC_UNSHARE_FAILED`]. It frees only a live allocation of
//!   exactly the pages given: any other address, pointer or page count is
//!   [`DEALLOC_NOT_ALLOCATED`] and frees nothing.
//! - `mmio_phys_to_virt` panics: this `Hal` is for transports that use no
//!   MMIO (vhost-user, in-process fakes); a PCI or MMIO transport needs a
//!   `Hal` that knows the machine's BARs.
//!
//! # Usage
//!
//! `Hal` methods take no `self`, so each `Hal` is a type with a static
//! slot, made by [`hal!`] and bound once to a `'static` platform and a
//! device. Several such types coexist (one per device, or per test).
//!
//! ```
//! use core::ptr::NonNull;
//! use swiotlb::{Device, DmaMask, IoTlb, Platform, Pool, PoolConfig};
//! use swiotlb_virtio::HalOptions;
//! use virtio_drivers::{BufferDirection, Hal};
//!
//! swiotlb_virtio::hal!(pub struct BlkHal);
//!
//! // A restricted pool for the device, on the heap.
//! let pool = Pool::new_heap(1 << 20, PoolConfig::default()).unwrap();
//! let platform: &'static Platform =
//!     Box::leak(Box::new(Platform::new().with_restricted(IoTlb::restricted("blk", pool))));
//! let dev = Device::new(DmaMask::BITS_64).with_restricted_tlb("blk");
//! BlkHal::bind(platform, dev, HalOptions::new()).unwrap();
//!
//! // Rings: zeroed pages from the restricted pool.
//! let (ring, vaddr) = BlkHal::dma_alloc(1, BufferDirection::Both);
//! assert_ne!(ring, 0);
//!
//! // A buffer the device fills: it bounces, and comes back on unshare.
//! let mut buf = [0u8; 512];
//! let raw = NonNull::from(&mut buf[..]);
//! // SAFETY: `buf` is left alone until the unshare below.
//! let dma = unsafe { BlkHal::share(raw, BufferDirection::DeviceToDriver) };
//! // ... the device writes 512 bytes at `dma` ...
//! // SAFETY: `dma` is `buf`'s share, and the device is done.
//! unsafe { BlkHal::unshare(dma, raw, BufferDirection::DeviceToDriver) };
//!
//! // SAFETY: `ring` and `vaddr` came from `dma_alloc` of one page.
//! assert_eq!(unsafe { BlkHal::dma_dealloc(ring, vaddr, 1) }, 0);
//! assert_eq!(platform.restricted()[0].stats().pool.io_tlb_used, 0);
//! ```
//!
//! # When the tlb is full
//!
//! `share` cannot return an error, so it tries everything that may help,
//! always within a deadline, then panics:
//!
//! 1. a growing tlb ([`swiotlb::IoTlb::growing`], or one given a
//!    [`Growth`](swiotlb::Growth)) grows on the call
//!    ([`Attrs::MAY_SLEEP`](swiotlb::Attrs::MAY_SLEEP), on by default in
//!    [`HalOptions`]); without `MAY_SLEEP` it makes a transient pool if its
//!    provider can give memory without sleeping;
//! 2. a tlb that cannot grow (fixed, or at its limit) makes the caller
//!    wait, with the feature `std`, for another thread to give slots back,
//!    up to the tlb's wait timeout ([`swiotlb::IoTlb::with_wait_timeout`],
//!    [`swiotlb::GrowConfig::wait_timeout`]; one second by default). The
//!    deadline matters: with one thread, the thread waiting may be the
//!    only one that could free slots;
//! 3. then `share` panics with a message that names swiotlb, the device
//!    ([`HalOptions::with_name`], else the `Hal` type), the tlb, the size
//!    requested, the free and total bytes of the tlb, and the reason
//!    (timed out, could not grow, may not sleep, no std to wait with).
//!
//! Without `std` nothing waits: step 2 is skipped.
//!
//! # Features
//!
//! - `std` (default): the core's `std`, which lets a full tlb make a
//!   caller wait. Without it the crate is `no_std` with `alloc` and builds
//!   for `x86_64-unknown-none`.
//!
//! # Safety and correctness
//!
//! The unsafe code is the `Hal` implementation's contract passed on to the
//! core: `dma_dealloc`'s to the core's `free_coherent` in
//! [`Engine::dma_dealloc`] (the pages are no longer used; both are
//! `unsafe`, so the public [`Engine`] a generated type hands out lets no
//! safe code free a driver's rings), and `share`'s and `unshare`'s to the
//! core's raw API in [`Engine::share`] and [`Engine::unshare`]: the buffer
//! virtio-drivers shares stays valid and untouched until its unshare (the
//! queue holds it until the device used it), so the core may copy into it
//! at unmap. A `DriverToDevice` buffer may be read-only memory: swiotlb
//! never writes a to-device mapping's original. `unshare` copies back
//! through the pointer virtio-drivers gives it then, not the one it gave
//! to `share`: the queue derives the buffer's pointer anew for `unshare`,
//! which makes the older one stale under Stacked Borrows (the core's
//! `Platform::unmap_raw_into` checks that both have the same address).
//! miri runs the real `VirtIOBlk` through this `Hal` (`tests/blk.rs`).
//! The [`PageSource`] zeroes memory a [`Provider`] gave it,
//! under that trait's contract. Everything else is safe code over the
//! core.
//!
//! [`Provider`]: swiotlb::provider::Provider
#![no_std]
#![deny(
    missing_docs,
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    clippy::multiple_unsafe_ops_per_block
)]

extern crate alloc;
mod engine;
mod pages;

pub use engine::{Engine, HalOptions, DEALLOC_NOT_ALLOCATED, DEALLOC_UNSHARE_FAILED};
pub use pages::PageSource;

/// The page size virtio-drivers allocates in (4 KiB).
pub const PAGE_SIZE: usize = virtio_drivers::PAGE_SIZE;

/// A `Hal` type was bound a second time; the first binding stays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlreadyBound {
    /// The `Hal` type's name.
    pub hal: &'static str,
}

impl core::fmt::Display for AlreadyBound {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "swiotlb-virtio: {} is already bound to a platform and device; a Hal type binds once",
            self.hal
        )
    }
}

impl core::error::Error for AlreadyBound {}

/// What [`hal!`] expands to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use spin::Once;
    // The expansion names the core through here, so that a crate that
    // renames its `swiotlb` dependency, or has none, can use the macro.
    pub use swiotlb;
    pub use virtio_drivers;

    /// The panic of a generated `Hal`'s `mmio_phys_to_virt`.
    #[cold]
    pub fn no_mmio(hal: &str, paddr: u64, size: usize) -> ! {
        panic!(
            "swiotlb-virtio: {hal}::mmio_phys_to_virt({paddr:#x}, {size}) called: this Hal is for transports that use no MMIO (vhost-user, in-process); a PCI or MMIO transport needs a Hal that maps the machine's BARs"
        )
    }

    /// The panic of a generated `Hal` used before its `bind`.
    #[cold]
    pub fn unbound(hal: &str) -> ! {
        panic!(
            "swiotlb-virtio: {hal} used before {hal}::bind: bind it to a platform and device first"
        )
    }
}

/// Declares a zero-sized [`virtio_drivers::Hal`] type with its own static
/// slot, bound once with `bind` to a `'static` [`swiotlb::Platform`] and a
/// [`swiotlb::Device`], delegating to an [`Engine`].
///
/// ```
/// // Fast pools, identity translation:
/// swiotlb_virtio::hal!(pub struct NetHal);
/// // Any policy and translation:
/// swiotlb_virtio::hal!(struct LegacyHal<swiotlb::NextFit, swiotlb::translate::Offset>);
/// ```
///
/// The expansion names swiotlb through this crate, never as `::swiotlb`,
/// so a crate with no `swiotlb` dependency of that name can use the
/// macro; here `swiotlb` is another crate altogether:
///
/// ```
/// extern crate core as swiotlb;
/// swiotlb_virtio::hal!(pub struct BlkHal);
/// swiotlb_virtio::hal!(struct OtherHal<swiotlb_virtio_core::Fast, swiotlb_virtio_core::translate::Identity>);
/// # use swiotlb_virtio::__private::swiotlb as swiotlb_virtio_core;
/// assert!(BlkHal::try_engine().is_none() && OtherHal::try_engine().is_none());
/// ```
///
/// The type gets:
/// - `bind(platform, device, options) -> Result<(), AlreadyBound>`: the
///   first call wins; a `HalOptions` with no name takes the type's name;
/// - `engine() -> &'static Engine<P, T>` (panics if unbound) and
///   `try_engine() -> Option<&'static Engine<P, T>>`;
/// - `unsafe impl virtio_drivers::Hal`, every method delegating to the
///   engine (used before `bind`, each panics with the type's name).
#[macro_export]
macro_rules! hal {
    ($(#[$meta:meta])* $vis:vis struct $name:ident) => {
        $crate::hal!($(#[$meta])* $vis struct $name<$crate::__private::swiotlb::Fast, $crate::__private::swiotlb::translate::Identity>);
    };
    ($(#[$meta:meta])* $vis:vis struct $name:ident<$policy:ty, $translate:ty>) => {
        $(#[$meta])*
        #[doc = concat!("A virtio-drivers `Hal` over swiotlb (`swiotlb_virtio::hal!`): bind it with `", stringify!($name), "::bind`.")]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        $vis struct $name;

        impl $name {
            fn slot() -> &'static $crate::__private::Once<$crate::Engine<$policy, $translate>> {
                static SLOT: $crate::__private::Once<$crate::Engine<$policy, $translate>> =
                    $crate::__private::Once::new();
                &SLOT
            }

            // `allow`, not `expect`: whether these are used depends on the
            // caller's visibility and code, which the macro cannot know.
            /// Binds this `Hal` to `platform` and `device`, once.
            ///
            /// # Errors
            /// [`AlreadyBound`]($crate::AlreadyBound) if it was bound
            /// before; the first binding stays.
            #[allow(dead_code)]
            $vis fn bind(
                platform: &'static $crate::__private::swiotlb::Platform<$policy>,
                device: $crate::__private::swiotlb::Device<$translate>,
                mut options: $crate::HalOptions,
            ) -> ::core::result::Result<(), $crate::AlreadyBound> {
                if options.name.is_empty() {
                    options.name = stringify!($name);
                }
                let mut fresh = false;
                Self::slot().call_once(|| {
                    fresh = true;
                    $crate::Engine::new(platform, device, options)
                });
                if fresh {
                    Ok(())
                } else {
                    Err($crate::AlreadyBound { hal: stringify!($name) })
                }
            }

            /// The engine this `Hal` is bound to, if it is.
            #[allow(dead_code)]
            $vis fn try_engine() -> ::core::option::Option<&'static $crate::Engine<$policy, $translate>> {
                Self::slot().get()
            }

            /// The engine this `Hal` is bound to.
            ///
            /// # Panics
            /// If it is not bound yet.
            $vis fn engine() -> &'static $crate::Engine<$policy, $translate> {
                match Self::slot().get() {
                    Some(e) => e,
                    None => $crate::__private::unbound(stringify!($name)),
                }
            }
        }

        // SAFETY: every method delegates to the engine, which keeps the
        // trait's implementation-safety rules: `dma_alloc` returns zeroed,
        // page-aligned memory that is its caller's alone until
        // `dma_dealloc` (a coherent allocation of a pool, or a page
        // source's region), and `mmio_phys_to_virt` never returns.
        unsafe impl $crate::__private::virtio_drivers::Hal for $name {
            fn dma_alloc(
                pages: usize,
                direction: $crate::__private::virtio_drivers::BufferDirection,
            ) -> (u64, ::core::ptr::NonNull<u8>) {
                Self::engine().dma_alloc(pages, direction)
            }

            unsafe fn dma_dealloc(
                paddr: u64,
                vaddr: ::core::ptr::NonNull<u8>,
                pages: usize,
            ) -> i32 {
                // SAFETY: virtio-drivers' contract for `dma_dealloc` (the
                // pages came from `dma_alloc` and it is done with them)
                // is `Engine::dma_dealloc`'s.
                unsafe { Self::engine().dma_dealloc(paddr, vaddr, pages) }
            }

            unsafe fn mmio_phys_to_virt(paddr: u64, size: usize) -> ::core::ptr::NonNull<u8> {
                $crate::__private::no_mmio(stringify!($name), paddr, size)
            }

            unsafe fn share(
                buffer: ::core::ptr::NonNull<[u8]>,
                direction: $crate::__private::virtio_drivers::BufferDirection,
            ) -> u64 {
                // SAFETY: virtio-drivers' contract for `share` (a valid,
                // non-empty buffer) and its queue's use of it (held, and
                // left alone, until the device used it and `unshare` ran)
                // are `Engine::share`'s.
                unsafe { Self::engine().share(buffer, direction) }
            }

            unsafe fn unshare(
                paddr: u64,
                buffer: ::core::ptr::NonNull<[u8]>,
                direction: $crate::__private::virtio_drivers::BufferDirection,
            ) {
                // SAFETY: `paddr` came from `share` of this buffer and
                // direction (virtio-drivers' contract), and the device is
                // done with it: `Engine::unshare`'s contract.
                unsafe { Self::engine().unshare(paddr, buffer, direction) }
            }
        }
    };
}
