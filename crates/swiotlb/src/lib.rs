//! A software IO TLB: bounce-buffer DMA for devices that cannot reach, or
//! must not see, the memory a driver hands them.
//!
//! This is the mapping layer Linux calls swiotlb, as a `no_std` library. A
//! [`Pool`] is a region of memory the device can reach (a low window, an
//! SRAM block, memory shared with the host of a confidential VM). A
//! [`Device`] says what the device reaches (its DMA mask and bus limit,
//! judged on both physical and device addresses) and how it aligns. Mapping
//! a buffer either hands the device its address directly or copies it into
//! the pool's slots and hands out the slots' address; sync and unmap copy
//! back, with Linux's semantics.
//!
//! # Usage
//!
//! A 32-bit device and a 64-bit one, a pool in low memory, one buffer each
//! (the translation here puts the heap above 4 GiB, as on a large machine):
//!
//! ```
//! use swiotlb::{Device, DmaMask, Direction, Pool, PoolConfig, PhysAddr, DmaAddr};
//! use swiotlb::translate::{Limits, Translate};
//!
//! // Physical = CPU address + 4 GiB, except the pool, which sits at
//! // physical 0x1000_0000 (below 4 GiB) whatever its CPU address.
//! #[derive(Clone)]
//! struct HighHeap;
//! impl Translate for HighHeap {
//!     fn phys_to_dma(&self, p: PhysAddr) -> DmaAddr { DmaAddr(p.0) }
//!     fn dma_to_phys(&self, d: DmaAddr) -> PhysAddr { PhysAddr(d.0) }
//!     fn virt_to_phys(&self, v: *const u8) -> PhysAddr { PhysAddr(v as u64 + (1 << 32)) }
//! }
//!
//! let mut mem = vec![0u8; 1 << 20].into_boxed_slice();
//! let cpu = std::ptr::NonNull::new(mem.as_mut_ptr()).unwrap();
//! // SAFETY: `mem` outlives `pool` and is touched only through it.
//! let pool: Pool = unsafe {
//!     Pool::new(cpu, PhysAddr(0x1000_0000), mem.len(), PoolConfig::default())
//! }.unwrap();
//!
//! let old = Device::new(DmaMask::BITS_32).with_translate(HighHeap);
//! let new = Device::new(DmaMask::BITS_64).with_translate(HighHeap);
//!
//! // The 32-bit device cannot reach the heap: its buffer bounces.
//! let m = pool.map(&old, vec![7u8; 1500], Direction::ToDevice).unwrap();
//! assert!(m.is_bounced());
//! assert!(m.dma_addr().as_u64() < 1 << 32);
//! let buf = m.unmap();
//! assert_eq!(buf, vec![7u8; 1500]);
//!
//! // The 64-bit device reaches it directly: no copy.
//! let m = pool.map(&new, vec![1u8; 4096], Direction::FromDevice).unwrap();
//! assert!(!m.is_bounced());
//! m.unmap();
//!
//! assert_eq!(pool.stats().io_tlb_used, 0);
//! assert_eq!(pool.stats().direct_maps, 1);
//! # drop(pool); drop(mem);
//! ```
//!
//! # Which type to build
//!
//! | to build                                    | use                                                        |
//! |---------------------------------------------|------------------------------------------------------------|
//! | a fixed pool                                | [`Pool`], or [`IoTlb::new`]`(TlbKind::Default, pool)`       |
//! | a pool that grows                           | [`IoTlb::growing`], or [`IoTlb::with_growth`] on your pool  |
//! | a restricted device (`restricted-dma-pool`) | [`IoTlb::restricted`] in a [`Platform`], [`Device::with_restricted_tlb`] |
//! | a high (64-bit) pool beside the default one | [`IoTlb::new`]`(TlbKind::High, pool)` in a [`Platform`]     |
//! | a device tree                               | `Platform::from_dt` (feature `fdt`), [`Platform::bind`]    |
//! | only a kernel command line (a MicroVM)      | `Platform::from_cmdline` ([`cmdline`]), `Platform::attach` |
//!
//! Every tlb and the platform have the same verbs: `map`, `map_with_attrs`,
//! `map_sg`, the raw API, coherent allocations, waiting and deferral, and
//! `stats` (see [`tlb`]).
//!
//! ## Without a heap
//!
//! Firmware and early boot have no allocator yet. A pool can keep its
//! bookkeeping in memory it is given for good, a `static` whose size
//! [`Pool::metadata_len`] works out at compile time
//! ([`Pool::new_with_metadata`]); with the `alloc` feature off, this pool
//! and the raw API are what there is:
//!
//! ```
//! use core::mem::MaybeUninit;
//! use core::ptr::{addr_of_mut, NonNull};
//! use swiotlb::{Attrs, Device, Direction, DmaMask, Fast, PhysAddr, Pool, PoolConfig};
//!
//! const LEN: usize = 256 << 10;
//! const CONFIG: PoolConfig = PoolConfig::DEFAULT;
//! const META_LEN: usize = Pool::<Fast>::metadata_len(LEN, CONFIG);
//!
//! #[repr(C, align(4096))]
//! struct Slots([u8; LEN]);
//! static mut SLOTS: Slots = Slots([0; LEN]);
//! static mut META: [MaybeUninit<u8>; META_LEN] = [MaybeUninit::uninit(); META_LEN];
//!
//! let vaddr = NonNull::new(addr_of_mut!(SLOTS).cast::<u8>()).unwrap();
//! let phys = PhysAddr(vaddr.as_ptr().addr() as u64); // identity mapped
//! let meta = addr_of_mut!(META);
//! // SAFETY: the only reference ever made to `META`.
//! let meta = unsafe { &mut *meta };
//! // SAFETY: `SLOTS` is valid for good, reached only through the pool, and
//! // lies at physical address `phys`.
//! let pool: Pool<Fast> =
//!     unsafe { Pool::new_with_metadata(vaddr, phys, LEN, CONFIG, meta) }.unwrap();
//!
//! // A device that must bounce (a confidential VM's), and a buffer.
//! let dev = Device::new(DmaMask::BITS_64).with_force_bounce();
//! let mut buf = [7u8; 512];
//! let cpu = buf.as_mut_ptr();
//! let dir = Direction::Bidirectional;
//! // SAFETY: `buf` is reached only through `cpu` until the unmap.
//! let dma = unsafe { pool.map_raw(&dev, PhysAddr(cpu.addr() as u64), cpu, 512, dir) }.unwrap();
//!
//! // The device answers in the bounce slots (the CPU plays it here).
//! let off = (dma.as_u64() - pool.start().as_u64()) as usize;
//! let slots = pool.vaddr().as_ptr().wrapping_add(off);
//! // SAFETY: the mapping's 512 bounce bytes, the device's until the unmap.
//! unsafe { slots.write_bytes(9, 512) };
//!
//! // SAFETY: the device is done; `buf` is still reached only through `cpu`.
//! unsafe { pool.unmap_raw(&dev, dma, 512, dir, Attrs::NONE) }.unwrap();
//! assert_eq!(buf, [9u8; 512]);
//! assert_eq!(pool.used_slots(), 0);
//! ```
//!
//! # Features
//!
//! - `alloc` (in `std`): what needs a heap: [`Pool::new`] and
//!   [`Pool::new_heap`] (metadata on the heap), statistics, [`Pool::map_sg`]
//!   of buffers, `Vec` and `Box` as [`DmaBuffer`]s, platforms and their
//!   tlbs, provided and growing pools. Without it the crate still gives
//!   pools over metadata memory the caller provides
//!   ([`Pool::new_with_metadata`]) with the raw API, coherent allocations
//!   and safe mappings of `&'static mut [u8]`, besides the address types,
//!   [`Device`], the translation trait, the `swiotlb=` grammar and the
//!   error type.
//! - `std` (default): `std::error::Error` for [`Error`]; waiting for
//!   slots (a caller that may sleep parks its thread); a tlb given no
//!   clock reads the standard library's monotonic one. The rest of what a
//!   hosted program wants (a heap provider, a clock by name, a maintainer
//!   thread, CPU hints) is in the `swiotlb-host` crate, so that this one
//!   stays `no_std` at heart.
//! - `sim` (implies `alloc`): the `sim` module, a simulator that drives a
//!   pool through the raw API from scripts and checks every byte.
//! - `fdt` (implies `alloc`): the `dt` module, which reads bounce and
//!   coherent pools from a flattened device tree (`/reserved-memory`,
//!   `restricted-dma-pool`, `shared-dma-pool`, `memory-region`).
//! - `serde` (off by default, no std needed): `serde::Serialize` for the
//!   statistics (`Stats`, with `alloc`) and the address newtypes.
//! - `checker` (implies `alloc`): the `checker` module, a misuse checker
//!   for the raw API (Linux's DMA-API debugging, with guard bytes and
//!   checksums of to-device originals besides), reporting typed findings
//!   to a handler you install. Off, it compiles to nothing.
//! - `unstable-internals`: entry points for this crate's own tests and
//!   benchmark (the allocator alone, a policy's view of its slots and
//!   areas). Not a stable API: they may change in any release.
//!
//! # Safety and correctness
//!
//! Unsafe code is confined to nine places, each with its reasoning at the
//! `unsafe` block:
//! - [`Pool::new`] and [`Pool::new_with_metadata`] trust their caller for
//!   the region (valid, contiguous, not otherwise touched by the CPU);
//! - a pool carves its bookkeeping out of one metadata block (the
//!   `pool::meta` module): on the heap, or lent for good as a
//!   `&'static mut`. Every array is checked against the block's end as it
//!   is carved, handed out once, and dropped before a heap block is freed;
//!   a policy keeps the arrays it is given inside its area state (a point
//!   of the [`Policy`] contract);
//! - the [`Policy`] trait is sealed and `unsafe`: the pool relies on a
//!   policy never handing out a slot twice, and only this crate's two
//!   policies implement it. Both shipped policies are
//!   checked against a shadow oracle by property tests and by loom;
//! - the one copy routine (`copy::bounce_copy`) documents why a plain byte
//!   copy is right for memory a device may write concurrently: no decision
//!   is ever made from bounce memory, and every length is checked against
//!   metadata the device cannot reach;
//! - the raw API ([`Pool::map_raw`] and friends) trusts its caller for the
//!   original buffer, as the kernel's DMA API does, and
//!   [`Pool::free_coherent`] (and the tlb's and platform's) trusts its
//!   caller that nothing uses a coherent allocation any more, as `dealloc`
//!   does: the next allocation zeroes the same slots;
//! - the `provider` module's `Provider` and `MemoryHooks` are `unsafe` to
//!   implement: a pool built from provided memory trusts the region it is
//!   given and that the hooks leave it valid;
//! - the tlb ([`tlb`]) passes the raw API's obligations on to
//!   requests that complete later (a queued bounce copies from the original
//!   when its slots come free), and hands a safe mapping a pointer to a
//!   pool that it keeps alive while the mapping's slots are held and frees
//!   only after every release in it has returned (the grace rule: a grown
//!   pool's slots are given back under the pool set's read lock, which its
//!   removal waits for);
//! - with the `checker` feature, the misuse checker reads a to-device
//!   original through the pointer the raw map was given (valid for reads
//!   until the unmap, under the raw API's contract) and writes guard bytes
//!   into the slots of a mapping that are not its own, which nothing else
//!   reads or writes;
//! - [`DmaBuffer`] is `unsafe` to implement: the safe API takes a buffer
//!   apart into a raw pointer before any copy and puts it back together
//!   only after the last one (the ownership rule: no pointer derived from
//!   a buffer outlives a move of that buffer, under Stacked and Tree
//!   Borrows alike).
//!
//! The safe API ([`Pool::map`]) owns the buffer for the life of the
//! mapping and holds only a raw pointer to it, so no Rust reference aliases
//! memory a device writes. miri runs the safe API with every shipped
//! [`DmaBuffer`] under both borrow models, and the release-versus-shrink
//! race across many scheduling seeds (`ci/miri.sh`); loom explores that
//! race and the other concurrent paths (`ci/loom.sh`).
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(
    missing_docs,
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    clippy::multiple_unsafe_ops_per_block
)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod addr;
pub mod attrs;
#[cfg(feature = "checker")]
pub mod checker;
pub mod cmdline;
pub mod config;
pub mod device;
pub mod direction;
#[cfg(feature = "fdt")]
pub mod dt;
pub mod error;
pub mod translate;

mod copy;
#[cfg(feature = "alloc")]
mod granules;
pub mod map;
pub mod pool;
#[cfg(feature = "alloc")]
pub mod provider;
#[cfg(feature = "sim")]
pub mod sim;
#[cfg(feature = "alloc")]
pub mod stats;
mod sync;
#[cfg(feature = "alloc")]
pub mod tlb;

pub use addr::{DmaAddr, DmaMask, PhysAddr};
pub use attrs::Attrs;
pub use device::Device;
pub use direction::Direction;
pub use error::{Error, FailReason, Result};
pub use translate::Translate;

pub use device::RestrictedTlb;
pub use map::{set_cpu_hint, CpuHint, DmaBuffer, MapFailed, MapOptions, Mapping, SgEntry};
pub use pool::{Bounce, Coherent, Fast, Hiwater, NextFit, Policy, Pool, PoolConfig};
#[cfg(feature = "alloc")]
pub use stats::Stats;
#[cfg(feature = "alloc")]
pub use tlb::{GrowConfig, Growth, IoTlb, Platform, TlbKind, TlbStats};

/// The README's Rust examples, compiled and run as doctests so that they
/// work when pasted.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
