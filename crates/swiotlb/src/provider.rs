//! Platform memory hooks: where new pool memory comes from, and what must be
//! done to it before a device may use it and after.
//!
//! A pool at a fixed address (a reserved region, an SRAM window, memory a
//! firmware already shared) needs none of this: build it with
//! [`Pool::new`] and it keeps working. This module is for pools whose
//! memory the platform must first find and prepare:
//!
//! - a [`Provider`] finds a physically contiguous region below a physical
//!   limit (Linux `swiotlb_memblock_alloc` at boot, `swiotlb_alloc_tlb`
//!   when growing);
//! - [`MemoryHooks`] prepare it: [`remap`](MemoryHooks::remap) exchanges
//!   its frames for machine-contiguous ones below a DMA width (Xen:
//!   `xen_create_contiguous_region`), [`share`](MemoryHooks::share) makes
//!   it visible to the host (SEV `set_memory_decrypted`, TDX `MapGPA`, pKVM
//!   `MEM_SHARE`), and the matching undo hooks reverse both on release.
//!
//! [`pool_from_provider`] runs the steps in order (allocate, remap, share,
//! build the pool) and undoes what it did, in reverse, when a step fails.
//! [`ProvidedPool`] owns the result and, when released, drops the pool,
//! then unshares, unremaps and frees the memory.
//!
//! The core ships the traits and no provider: where memory comes from is
//! the platform's business. A hosted (`std`) program finds two in the
//! `swiotlb-host` crate: `swiotlb_host::HeapProvider` (zeroed heap memory
//! whose "physical" address is its CPU address, for tests, simulations and
//! user-space stacks) and `swiotlb_host::MemfdProvider` (memory another
//! process can map).
//!
//! # Usage
//!
//! ```
//! use swiotlb::provider::{pool_from_provider, NoHooks, XEN_DMA_BITS};
//! use swiotlb::{Device, Direction, DmaMask, Fast, PhysAddr, PoolConfig};
//! use swiotlb_host::HeapProvider;
//!
//! // 512 KiB anywhere (no physical limit), nothing to prepare.
//! let pool = pool_from_provider::<Fast, _, _>(
//!     HeapProvider::new(),
//!     NoHooks,
//!     512 << 10,
//!     PhysAddr(u64::MAX),
//!     PoolConfig::default(),
//!     XEN_DMA_BITS.0,
//!     XEN_DMA_BITS.1,
//! )
//! .unwrap();
//! let dev = Device::new(DmaMask::BITS_64).with_force_bounce();
//! let m = pool.map(&dev, vec![7u8; 1500], Direction::ToDevice).unwrap();
//! assert!(m.is_bounced());
//! m.unmap();
//! // Drops the pool, then undoes the hooks and frees the memory.
//! pool.release().unwrap();
//! ```
//!
//! # When the hooks run
//!
//! Every provider and hook method may sleep (hypercalls, page-table
//! rewrites, TLB shootdowns). None is ever called under an area lock or any
//! other lock of this crate: they run only in [`pool_from_provider`] before
//! the pool exists, and in [`ProvidedPool::release`] or its `Drop` after the
//! pool is gone. Never build or release a provided pool where sleeping is
//! not allowed.
//!
//! # Memory whose undo failed is leaked
//!
//! If making the memory private again fails, it may still be readable by the
//! host; giving it back to the allocator would hand the next owner memory
//! that leaks whatever it stores. So, as Linux's `swiotlb_free_tlb` and
//! `alloc_dma_pages` do ("intentional leak if pages cannot be encrypted
//! again"), a region whose [`unshare`](MemoryHooks::unshare) or
//! [`unremap`](MemoryHooks::unremap) failed is never passed to
//! [`Provider::free`]: it is leaked, and the failure is reported as
//! [`ProviderError::Leaked`].

use alloc::sync::Arc;
use core::fmt;
use core::ptr::NonNull;

use crate::addr::PhysAddr;
use crate::error::Error;
use crate::pool::{Fast, Policy, Pool, PoolConfig};

/// A physically contiguous region of memory: its CPU address, its CPU
/// physical address and its length.
///
/// A `Region` is a description only: holding one gives no right to touch
/// the memory. What may be done with it is said by whoever hands it out
/// ([`Provider::alloc`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// The CPU address of the first byte.
    pub cpu: NonNull<u8>,
    /// The CPU physical address of the first byte.
    pub phys: PhysAddr,
    /// Bytes in the region.
    pub len: usize,
}

// SAFETY: a `Region` is a plain description (an address and a length); it
// gives no access to the memory by itself, and any code that dereferences
// `cpu` must justify that access on its own, whatever thread it runs on.
unsafe impl Send for Region {}
// SAFETY: as for `Send`: `&Region` exposes only copies of the address and
// length.
unsafe impl Sync for Region {}

impl Region {
    /// The part of the region from byte `offset`, at most `len` bytes long;
    /// `None` if `offset` is not inside the region.
    pub fn slice(&self, offset: usize, len: usize) -> Option<Region> {
        if offset >= self.len {
            return None;
        }
        Some(Region {
            cpu: NonNull::new(self.cpu.as_ptr().wrapping_add(offset))?,
            phys: PhysAddr(self.phys.0.checked_add(offset as u64)?),
            len: len.min(self.len - offset),
        })
    }

    /// Whether the whole region lies below the exclusive physical limit
    /// `below`.
    pub fn is_below(&self, below: PhysAddr) -> bool {
        match self.phys.0.checked_add(self.len as u64) {
            Some(end) => end <= below.0,
            None => false,
        }
    }
}

/// Which platform hook failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// [`MemoryHooks::remap`].
    Remap,
    /// [`MemoryHooks::unremap`].
    Unremap,
    /// [`MemoryHooks::share`].
    Share,
    /// [`MemoryHooks::unshare`].
    Unshare,
}

impl Hook {
    /// The hook's name, as in the trait.
    pub const fn name(self) -> &'static str {
        match self {
            Hook::Remap => "remap",
            Hook::Unremap => "unremap",
            Hook::Share => "share",
            Hook::Unshare => "unshare",
        }
    }
}

/// Everything that can go wrong while getting pool memory from the
/// platform or giving it back.
///
/// Cheap to copy, like [`Error`]; the `Display` text starts with
/// `swiotlb:`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProviderError {
    /// The provider has no physically contiguous region of `len` bytes
    /// entirely below `below`.
    NoMemory {
        /// Bytes asked for.
        len: usize,
        /// The exclusive physical limit.
        below: PhysAddr,
    },
    /// The provider returned a region shorter than asked for or not below
    /// the limit; it was freed unused.
    BadRegion {
        /// Physical base of the region returned.
        phys: PhysAddr,
        /// Its length.
        len: usize,
        /// The exclusive physical limit asked for.
        below: PhysAddr,
    },
    /// The DMA widths to try for a remap are empty (`start > max`) or wider
    /// than 64 bits.
    BadDmaBits {
        /// The first width to try.
        start: u32,
        /// The last width to try.
        max: u32,
    },
    /// A platform hook failed. Hooks build this with
    /// [`ProviderError::hook`].
    HookFailed {
        /// The hook.
        hook: Hook,
        /// Physical base of the range it was given.
        phys: PhysAddr,
        /// Length of that range.
        len: usize,
        /// The platform's error code (a hypercall status, an errno).
        code: i32,
    },
    /// [`MemoryHooks::remap`] failed at every DMA width up to the widest
    /// allowed: the platform has no machine-contiguous frames low enough
    /// (swiotlb-xen: "Failed to get contiguous memory for DMA").
    RemapExhausted {
        /// Physical base of the chunk that could not be remapped.
        phys: PhysAddr,
        /// Its length.
        len: usize,
        /// The widest DMA width tried.
        widest: u32,
        /// The platform's error code from the last try.
        code: i32,
    },
    /// An undo hook failed, so the region was leaked rather than freed:
    /// memory that may still be shared with the host is never given back
    /// to the allocator.
    Leaked {
        /// The undo hook that failed.
        hook: Hook,
        /// Physical base of the leaked region.
        phys: PhysAddr,
        /// Its length.
        len: usize,
        /// The platform's error code.
        code: i32,
    },
    /// [`Pool::new`] refused the region (bad geometry, unaligned base).
    Pool(Error),
    /// Memory was asked for on a path that must not sleep, and the provider
    /// (or the hooks the memory would need) can only give it by sleeping:
    /// [`Provider::alloc_nowait`] and [`MemoryHooks::nowait`].
    WouldSleep {
        /// Bytes asked for.
        len: usize,
    },
}

impl ProviderError {
    /// The error a hook returns when `hook` failed on `region` with the
    /// platform's error `code`.
    pub const fn hook(hook: Hook, region: &Region, code: i32) -> Self {
        ProviderError::HookFailed {
            hook,
            phys: region.phys,
            len: region.len,
            code,
        }
    }

    /// The platform's error code, if the error carries one.
    pub const fn code(&self) -> Option<i32> {
        match *self {
            ProviderError::HookFailed { code, .. }
            | ProviderError::RemapExhausted { code, .. }
            | ProviderError::Leaked { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl From<Error> for ProviderError {
    fn from(e: Error) -> Self {
        ProviderError::Pool(e)
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ProviderError::NoMemory { len, below } => write!(
                f,
                "swiotlb: no contiguous region of {len} bytes below {below} for a pool"
            ),
            ProviderError::BadRegion { phys, len, below } => write!(
                f,
                "swiotlb: provider returned {len} bytes at {phys}, too short or not below {below}"
            ),
            ProviderError::BadDmaBits { start, max } => write!(
                f,
                "swiotlb: no DMA width to remap with ({start} to {max} bits)"
            ),
            ProviderError::HookFailed {
                hook,
                phys,
                len,
                code,
            } => write!(
                f,
                "swiotlb: {} of {len} bytes at {phys} failed (code {code})",
                hook.name()
            ),
            ProviderError::RemapExhausted {
                phys,
                len,
                widest,
                code,
            } => write!(
                f,
                "swiotlb: no machine-contiguous memory for {len} bytes at {phys} up to {widest} DMA bits (code {code})"
            ),
            ProviderError::Leaked {
                hook,
                phys,
                len,
                code,
            } => write!(
                f,
                "swiotlb: {} of {len} bytes at {phys} failed (code {code}); the memory is leaked, not freed",
                hook.name()
            ),
            ProviderError::Pool(e) => write!(f, "{e}"),
            ProviderError::WouldSleep { len } => write!(
                f,
                "swiotlb: {len} bytes for a pool cannot be had without sleeping"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ProviderError {}

/// Where pool memory comes from.
///
/// Both methods may sleep. They are never called under a lock of this
/// crate (see the [module docs](self)).
///
/// # Implementation safety
///
/// A region returned by [`alloc`](Provider::alloc):
/// - is valid for reads and writes of `len` bytes at `cpu` until it is
///   passed to [`free`](Provider::free);
/// - is physically contiguous, and `phys` is the physical address of `cpu`;
/// - lies entirely below the limit given (`phys + len <= below`) and holds
///   at least the bytes asked for;
/// - is the caller's alone until freed: nothing else on the CPU side reads
///   or writes it, and it overlaps no other live region of the provider.
///
/// The pool built over it relies on all of this for memory safety, through
/// [`Pool::new`].
pub unsafe trait Provider: Send + Sync {
    /// A physically contiguous region of at least `len` bytes lying
    /// entirely below the exclusive physical limit `below` (4 GiB for a
    /// pool serving 32-bit devices, `u64::MAX` for no limit).
    ///
    /// # Errors
    /// [`ProviderError::NoMemory`] when no such region is available.
    fn alloc(&self, len: usize, below: PhysAddr) -> Result<Region, ProviderError>;

    /// As [`alloc`](Provider::alloc), but called where the caller must not
    /// sleep (Linux `GFP_NOWAIT`): a growing tlb asks for a transient pool
    /// here when a mapping that may not sleep finds every pool full. It
    /// must neither sleep nor wait for a lock a sleeping caller could
    /// hold; a region it returns may also be given to
    /// [`free`](Provider::free) where sleeping is not allowed.
    ///
    /// The default gives nothing: a provider that can only give memory by
    /// sleeping leaves such callers to fail or defer.
    ///
    /// # Errors
    /// [`ProviderError::WouldSleep`] (the default), or
    /// [`ProviderError::NoMemory`].
    fn alloc_nowait(&self, len: usize, below: PhysAddr) -> Result<Region, ProviderError> {
        let _ = below;
        Err(ProviderError::WouldSleep { len })
    }

    /// Gives a region back.
    ///
    /// # Safety
    /// - `region` was returned by [`alloc`](Provider::alloc) of this
    ///   provider, unchanged, and is freed once;
    /// - nothing uses the memory any more (the pool over it is dropped),
    ///   and every hook applied to it was undone.
    unsafe fn free(&self, region: Region);
}

/// What the platform must do to pool memory before a device may use it,
/// and undo before it is freed.
///
/// Each method has a default that does nothing and succeeds: a platform
/// implements only what it needs, and [`NoHooks`] implements none. Every
/// method may sleep and is never called under a lock of this crate: hooks
/// run only while a pool is built (before it exists) and released (after
/// it is dropped). They are called in this order:
///
/// 1. [`remap`](MemoryHooks::remap) on each segment-sized chunk, with DMA
///    widths widening on failure;
/// 2. [`share`](MemoryHooks::share) on the whole region;
/// 3. the pool lives;
/// 4. [`unshare`](MemoryHooks::unshare) on the whole region;
/// 5. [`unremap`](MemoryHooks::unremap) on each chunk, last first.
///
/// # Implementation safety
///
/// Whether a hook succeeds or fails:
/// - the region stays valid for reads and writes by the CPU at the same
///   CPU address and physical address (a remap exchanges the frames
///   *behind* the physical address, as Xen does, it never moves the
///   region; sharing changes who else may see it, not whether the CPU may);
/// - the hook touches no memory outside the region.
///
/// The hooks may destroy the region's contents (decrypting memory in place
/// scrambles it; a Xen exchange hands back fresh frames): the pool never
/// reads slot contents it did not write.
pub unsafe trait MemoryHooks: Send + Sync {
    /// Whether every hook can run without sleeping, so that a transient
    /// pool can be prepared on a path that must not sleep. The default is
    /// `false`: setting memory attributes usually sleeps (Linux's
    /// `set_memory_decrypted` does, which is how dynamic swiotlb users hit
    /// "scheduling while atomic").
    fn nowait(&self) -> bool {
        false
    }

    /// Makes the region visible to the host and its devices: SEV
    /// `set_memory_decrypted`, TDX `MapGPA` to shared, pKVM `MEM_SHARE`
    /// (Linux `swiotlb_update_mem_attributes` for the boot pool).
    ///
    /// # Errors
    /// [`ProviderError::HookFailed`] with [`Hook::Share`]. The region may
    /// be partly shared: [`unshare`](MemoryHooks::unshare) is called before
    /// the region is freed.
    fn share(&self, region: &Region) -> Result<(), ProviderError> {
        let _ = region;
        Ok(())
    }

    /// Makes the region private again (re-encrypts it), undoing
    /// [`share`](MemoryHooks::share).
    ///
    /// # Errors
    /// [`ProviderError::HookFailed`] with [`Hook::Unshare`]; the region is
    /// then leaked, never freed.
    fn unshare(&self, region: &Region) -> Result<(), ProviderError> {
        let _ = region;
        Ok(())
    }

    /// Exchanges the frames behind one chunk of the region for
    /// machine-contiguous frames below `2^dma_bits` (Xen
    /// `xen_create_contiguous_region`). Called once per segment-sized
    /// chunk: a mapping never crosses a segment, so each segment needs to
    /// be machine-contiguous only within itself, as in swiotlb-xen's
    /// `xen_swiotlb_fixup`.
    ///
    /// # Errors
    /// [`ProviderError::HookFailed`] with [`Hook::Remap`]: the chunk is
    /// retried at the next wider width.
    fn remap(&self, region: &Region, dma_bits: u32) -> Result<(), ProviderError> {
        let _ = (region, dma_bits);
        Ok(())
    }

    /// Undoes [`remap`](MemoryHooks::remap) of one chunk (Xen
    /// `xen_destroy_contiguous_region`), giving the scarce low machine
    /// frames back.
    ///
    /// # Errors
    /// [`ProviderError::HookFailed`] with [`Hook::Unremap`]; the region is
    /// then leaked, never freed.
    fn unremap(&self, region: &Region) -> Result<(), ProviderError> {
        let _ = region;
        Ok(())
    }
}

/// Hooks that do nothing: memory that needs no preparation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoHooks;

// SAFETY: every hook is the default, which touches nothing.
unsafe impl MemoryHooks for NoHooks {
    fn nowait(&self) -> bool {
        true
    }
}

// SAFETY: forwards to `T`, which upholds the contract.
unsafe impl<T: Provider + ?Sized> Provider for &T {
    fn alloc(&self, len: usize, below: PhysAddr) -> Result<Region, ProviderError> {
        (**self).alloc(len, below)
    }
    fn alloc_nowait(&self, len: usize, below: PhysAddr) -> Result<Region, ProviderError> {
        (**self).alloc_nowait(len, below)
    }
    unsafe fn free(&self, region: Region) {
        // SAFETY:
        // - the caller guarantees `region` came from this provider, which
        //   is `T`, and is freed once;
        // - the caller guarantees nothing uses it and its hooks are undone.
        unsafe { (**self).free(region) }
    }
}

// SAFETY: forwards to `T`, which upholds the contract.
unsafe impl<T: Provider + ?Sized> Provider for Arc<T> {
    fn alloc(&self, len: usize, below: PhysAddr) -> Result<Region, ProviderError> {
        (**self).alloc(len, below)
    }
    fn alloc_nowait(&self, len: usize, below: PhysAddr) -> Result<Region, ProviderError> {
        (**self).alloc_nowait(len, below)
    }
    unsafe fn free(&self, region: Region) {
        // SAFETY:
        // - the caller guarantees `region` came from this provider, which
        //   is `T`, and is freed once;
        // - the caller guarantees nothing uses it and its hooks are undone.
        unsafe { (**self).free(region) }
    }
}

// SAFETY: forwards to `T`, which upholds the contract.
unsafe impl<T: MemoryHooks + ?Sized> MemoryHooks for &T {
    fn nowait(&self) -> bool {
        (**self).nowait()
    }
    fn share(&self, region: &Region) -> Result<(), ProviderError> {
        (**self).share(region)
    }
    fn unshare(&self, region: &Region) -> Result<(), ProviderError> {
        (**self).unshare(region)
    }
    fn remap(&self, region: &Region, dma_bits: u32) -> Result<(), ProviderError> {
        (**self).remap(region, dma_bits)
    }
    fn unremap(&self, region: &Region) -> Result<(), ProviderError> {
        (**self).unremap(region)
    }
}

// SAFETY: forwards to `T`, which upholds the contract.
unsafe impl<T: MemoryHooks + ?Sized> MemoryHooks for Arc<T> {
    fn nowait(&self) -> bool {
        (**self).nowait()
    }
    fn share(&self, region: &Region) -> Result<(), ProviderError> {
        (**self).share(region)
    }
    fn unshare(&self, region: &Region) -> Result<(), ProviderError> {
        (**self).unshare(region)
    }
    fn remap(&self, region: &Region, dma_bits: u32) -> Result<(), ProviderError> {
        (**self).remap(region, dma_bits)
    }
    fn unremap(&self, region: &Region) -> Result<(), ProviderError> {
        (**self).unremap(region)
    }
}

/// The DMA widths swiotlb-xen tries when it remaps a pool: it starts at
/// the order of one segment plus the page shift (18 bits for 256 KiB
/// segments) and widens one bit at a time up to 32 (`MAX_DMA_BITS`).
pub const XEN_DMA_BITS: (u32, u32) = (18, 32);

/// Builds a pool of `len` bytes over memory from `provider`, below the
/// exclusive physical limit `below`, prepared by `hooks`.
///
/// The steps, each undone in reverse if a later one fails:
/// 1. [`Provider::alloc`];
/// 2. [`MemoryHooks::remap`] of each segment-sized chunk (`config.segment`
///    slots), trying DMA widths from `dma_bits_start` up to `dma_bits_max`.
///    As in swiotlb-xen's `xen_swiotlb_fixup`, a failure retries the same
///    chunk one bit wider, and the width reached carries on to the next
///    chunk rather than starting low again: once low frames ran out they
///    stay out. Failing at `dma_bits_max` fails the build with
///    [`ProviderError::RemapExhausted`]. Platforms without a remap use the
///    default hook, which succeeds at once; [`XEN_DMA_BITS`] are Linux's
///    widths;
/// 3. [`MemoryHooks::share`] of the whole region. If it fails, the region
///    is unshared before it is freed (it may be partly shared), and leaked
///    if that fails too, as Linux's `alloc_dma_pages` does;
/// 4. [`Pool::new`] over the region.
///
/// May sleep: every step may. Call it where sleeping is allowed, holding
/// no lock a pool user could need.
///
/// # Errors
/// [`ProviderError::BadDmaBits`] before anything is done if the widths are
/// empty or wider than 64; the provider's error (usually
/// [`ProviderError::NoMemory`]); [`ProviderError::BadRegion`] if the
/// provider broke its contract in a way that can be seen;
/// [`ProviderError::RemapExhausted`]; the share hook's error;
/// [`ProviderError::Pool`] if [`Pool::new`] refuses the region. In every
/// case the memory was given back, unless an undo hook failed: then it was
/// leaked, and [`ProviderError::Leaked`] is returned in place of the error
/// that started the undo (except after a failed share, whose error is
/// returned either way).
pub fn pool_from_provider<P: Policy, V: Provider, H: MemoryHooks>(
    provider: V,
    hooks: H,
    len: usize,
    below: PhysAddr,
    config: PoolConfig,
    dma_bits_start: u32,
    dma_bits_max: u32,
) -> Result<ProvidedPool<V, H, P>, ProviderError> {
    build(
        provider,
        hooks,
        len,
        below,
        config,
        (dma_bits_start, dma_bits_max),
        Sleep::Allowed,
    )
}

/// Whether building a pool may sleep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sleep {
    /// It may: [`Provider::alloc`], and hooks that may sleep.
    Allowed,
    /// It must not: [`Provider::alloc_nowait`], and only hooks that say
    /// they do not sleep ([`MemoryHooks::nowait`]).
    Forbidden,
}

/// [`pool_from_provider`], or with [`Sleep::Forbidden`] its variant for
/// paths that must not sleep: memory from [`Provider::alloc_nowait`], and refused
/// with [`ProviderError::WouldSleep`] up front unless
/// [`MemoryHooks::nowait`].
pub(crate) fn build<P: Policy, V: Provider, H: MemoryHooks>(
    provider: V,
    hooks: H,
    len: usize,
    below: PhysAddr,
    config: PoolConfig,
    (dma_bits_start, dma_bits_max): (u32, u32),
    sleep: Sleep,
) -> Result<ProvidedPool<V, H, P>, ProviderError> {
    if dma_bits_start > dma_bits_max || dma_bits_max > 64 {
        return Err(ProviderError::BadDmaBits {
            start: dma_bits_start,
            max: dma_bits_max,
        });
    }
    let region = if sleep == Sleep::Forbidden {
        if !hooks.nowait() {
            return Err(ProviderError::WouldSleep { len });
        }
        provider.alloc_nowait(len, below)?
    } else {
        provider.alloc(len, below)?
    };
    let mut prep = Prepared {
        provider,
        hooks,
        region,
        chunk: chunk_len(&config, region.len),
        remapped: 0,
        shared: false,
    };
    if region.len < len || !region.is_below(below) {
        // A provider that breaks its contract in a way we can see is told
        // no, and its region goes straight back: nothing was done to it.
        prep.undo()?;
        return Err(ProviderError::BadRegion {
            phys: region.phys,
            len: region.len,
            below,
        });
    }

    let mut bits = dma_bits_start;
    let mut off = 0;
    while let Some(chunk) = region.slice(off, prep.chunk) {
        loop {
            match prep.hooks.remap(&chunk, bits) {
                Ok(()) => break,
                // swiotlb-xen: `while (rc && dma_bits++ < MAX_DMA_BITS)`,
                // so the last width tried is the maximum itself.
                Err(_) if bits < dma_bits_max => bits += 1,
                Err(e) => {
                    prep.undo()?;
                    return Err(ProviderError::RemapExhausted {
                        phys: chunk.phys,
                        len: chunk.len,
                        widest: bits,
                        code: e.code().unwrap_or(0),
                    });
                }
            }
        }
        prep.remapped += 1;
        off += chunk.len;
    }

    // Even a failed share may have shared part of the region (a TDX
    // conversion stopped halfway), so from here on the undo unshares.
    prep.shared = true;
    if let Err(e) = prep.hooks.share(&region) {
        // Linux `alloc_dma_pages`: re-encrypt, free only if that worked.
        // The share error is the cause worth reporting either way.
        let _ = prep.undo();
        return Err(e);
    }

    // SAFETY:
    // - `region.cpu` is valid for reads and writes of `region.len >= len`
    //   bytes until `free`, by `Provider::alloc`'s contract; the hooks
    //   kept it so (`MemoryHooks`' contract), and `ProvidedPool` frees it
    //   only after dropping the pool;
    // - the region is ours alone (`Provider::alloc`), and this function
    //   and `ProvidedPool` touch its bytes only through the pool;
    // - `region.phys` is the physical address of `region.cpu` and the
    //   region is physically contiguous (`Provider::alloc`); remapping
    //   keeps the physical address (`MemoryHooks`).
    match unsafe { Pool::<P>::new(region.cpu, region.phys, len, config) } {
        Ok(pool) => Ok(ProvidedPool {
            pool: Some(pool),
            prep,
            released: false,
            on_error: None,
        }),
        Err(e) => {
            prep.undo()?;
            Err(ProviderError::Pool(e))
        }
    }
}

/// The length of one remap chunk: a segment of the pool (swiotlb-xen
/// exchanges `IO_TLB_SEGSIZE` slots at a time). A geometry that makes no
/// sense gives one chunk; [`Pool::new`] then refuses it.
fn chunk_len(config: &PoolConfig, region_len: usize) -> usize {
    (config.segment as usize)
        .checked_shl(config.slot_shift)
        .filter(|&c| c != 0 && config.segment.is_power_of_two())
        .unwrap_or(region_len)
        .min(region_len.max(1))
}

/// A region from a provider and what was done to it so far; `undo`
/// reverses exactly that.
struct Prepared<V: Provider, H: MemoryHooks> {
    provider: V,
    hooks: H,
    region: Region,
    /// Bytes per remap chunk.
    chunk: usize,
    /// Chunks remapped, from the first.
    remapped: usize,
    /// Whether `share` was called (even if it failed).
    shared: bool,
}

impl<V: Provider, H: MemoryHooks> Prepared<V, H> {
    /// Unshares, unremaps the remapped chunks last first, and frees the
    /// region. Stops at the first undo that fails and leaks the region
    /// (see the module docs). Call once, with no pool over the region.
    fn undo(&mut self) -> Result<(), ProviderError> {
        let region = self.region;
        let leaked = |hook, e: ProviderError| ProviderError::Leaked {
            hook,
            phys: region.phys,
            len: region.len,
            code: e.code().unwrap_or(0),
        };
        if self.shared {
            self.hooks
                .unshare(&region)
                .map_err(|e| leaked(Hook::Unshare, e))?;
            self.shared = false;
        }
        while self.remapped > 0 {
            let i = self.remapped - 1;
            if let Some(chunk) = region.slice(i * self.chunk, self.chunk) {
                self.hooks
                    .unremap(&chunk)
                    .map_err(|e| leaked(Hook::Unremap, e))?;
            }
            self.remapped = i;
        }
        // SAFETY:
        // - `region` came from `self.provider.alloc`, unchanged, and `undo`
        //   runs once per region (callers give up `self` or mark it
        //   released right after), so it is freed once;
        // - no pool is over it any more (callers drop it first), and the
        //   unshare and every unremap above succeeded.
        unsafe { self.provider.free(region) };
        Ok(())
    }
}

/// A pool over memory from a [`Provider`], prepared by [`MemoryHooks`]:
/// what [`pool_from_provider`] returns.
///
/// It dereferences to the [`Pool`]. Safe mappings borrow it, so it cannot
/// be released while one is live.
///
/// Releasing it, by [`release`](ProvidedPool::release) or by dropping it,
/// drops the pool, then unshares the memory, unremaps it, and frees it. An
/// undo that fails leaks the memory instead of freeing it (see the
/// [module docs](self)): `release` returns [`ProviderError::Leaked`];
/// `Drop` cannot return it, so it passes it to the callback set with
/// [`on_release_error`](ProvidedPool::on_release_error), if any.
///
/// Releasing may sleep.
pub struct ProvidedPool<V: Provider, H: MemoryHooks = NoHooks, P: Policy = Fast> {
    /// `None` once released, or once taken out by
    /// [`ProvidedPool::into_parts`].
    pool: Option<Pool<P>>,
    prep: Prepared<V, H>,
    /// Whether the memory was given back (or leaked): it is, once.
    released: bool,
    on_error: Option<fn(ProviderError)>,
}

/// The memory under a pool taken out of its [`ProvidedPool`]: dropping it
/// gives the memory back (unshares, unremaps, frees), so it must outlive
/// the pool. A tlb keeps its first pool this way, beside the pool, so that
/// reaching the pool costs no check.
pub(crate) struct Backing<V: Provider, H: MemoryHooks, P: Policy>(ProvidedPool<V, H, P>);

impl<P: Policy, V: Provider, H: MemoryHooks> ProvidedPool<V, H, P> {
    /// The pool.
    pub fn pool(&self) -> &Pool<P> {
        // `pool` is `None` only once `release_inner` ran, which happens
        // only in `release` (which consumes `self`) and in `Drop`.
        self.pool
            .as_ref()
            .expect("a provided pool holds its pool until released")
    }

    /// The region the pool lives in, as the provider returned it.
    pub fn region(&self) -> &Region {
        &self.prep.region
    }

    /// The provider.
    pub fn provider(&self) -> &V {
        &self.prep.provider
    }

    /// The hooks.
    pub fn hooks(&self) -> &H {
        &self.prep.hooks
    }

    /// Sets a function that `Drop` calls with the error when giving the
    /// memory back fails (the memory is then leaked): a place to log it,
    /// since `Drop` cannot return it.
    pub fn on_release_error(&mut self, f: fn(ProviderError)) {
        self.on_error = Some(f);
    }

    /// Drops the pool, then unshares, unremaps and frees its memory. May
    /// sleep.
    ///
    /// # Errors
    /// [`ProviderError::Leaked`] if an undo hook failed: the memory was not
    /// freed. The callback set with
    /// [`on_release_error`](ProvidedPool::on_release_error) is not called:
    /// the caller has the error.
    pub fn release(mut self) -> Result<(), ProviderError> {
        self.release_inner()
    }

    fn release_inner(&mut self) -> Result<(), ProviderError> {
        if core::mem::replace(&mut self.released, true) {
            return Ok(());
        }
        // The pool first: nothing may use the memory once the undo starts.
        drop(self.pool.take());
        self.prep.undo()
    }

    /// The pool, and the memory under it, which is given back when the
    /// [`Backing`] drops: drop the pool first.
    pub(crate) fn into_parts(mut self) -> (Pool<P>, Backing<V, H, P>) {
        let pool = self
            .pool
            .take()
            .expect("a provided pool holds its pool until released");
        (pool, Backing(self))
    }
}

impl<P: Policy, V: Provider, H: MemoryHooks> core::ops::Deref for ProvidedPool<V, H, P> {
    type Target = Pool<P>;

    fn deref(&self) -> &Pool<P> {
        self.pool()
    }
}

impl<P: Policy, V: Provider, H: MemoryHooks> Drop for ProvidedPool<V, H, P> {
    fn drop(&mut self) {
        if let Err(e) = self.release_inner() {
            if let Some(f) = self.on_error {
                f(e);
            }
        }
    }
}

impl<P: Policy, V: Provider, H: MemoryHooks> fmt::Debug for ProvidedPool<V, H, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProvidedPool")
            .field("pool", &self.pool)
            .field("region", &self.prep.region)
            .finish_non_exhaustive()
    }
}
