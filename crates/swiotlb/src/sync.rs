//! The lock and atomic facade.
//!
//! Everything in the core that is shared between threads goes through this
//! module, so that building with `RUSTFLAGS="--cfg swiotlb_loom"` swaps in
//! loom's model-checked versions and the loom tests explore every
//! interleaving of the real code (the sharded-slab `sync.rs` pattern).
//!
//! Outside loom the area lock is a spin lock: the core runs in `no_std`
//! kernels and paravisors where no scheduler exists, and its critical
//! sections are a few word scans long (Linux uses a spin lock with IRQs off
//! for the same reason).

#![forbid(unsafe_code)]

#[cfg(not(swiotlb_loom))]
mod imp {
    #[cfg(feature = "alloc")]
    pub(crate) use core::sync::atomic::AtomicBool;
    pub(crate) use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

    /// A reader-writer lock: a spin lock, for the pool set of a growing
    /// tlb (read on every map and unmap, written when a pool is added or
    /// removed).
    #[cfg(feature = "alloc")]
    pub(crate) struct RwLock<T>(spin::RwLock<T>);

    #[cfg(feature = "alloc")]
    impl<T> RwLock<T> {
        pub(crate) const fn new(value: T) -> Self {
            Self(spin::RwLock::new(value))
        }

        #[inline]
        pub(crate) fn read(&self) -> spin::RwLockReadGuard<'_, T> {
            self.0.read()
        }

        #[inline]
        pub(crate) fn write(&self) -> spin::RwLockWriteGuard<'_, T> {
            self.0.write()
        }
    }

    /// A mutual-exclusion lock: a spin lock.
    pub(crate) struct Mutex<T>(spin::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) const fn new(value: T) -> Self {
            Self(spin::Mutex::new(value))
        }

        #[inline]
        pub(crate) fn lock(&self) -> spin::MutexGuard<'_, T> {
            self.0.lock()
        }
    }
}

#[cfg(swiotlb_loom)]
mod imp {
    #[cfg(feature = "alloc")]
    pub(crate) use loom::sync::atomic::AtomicBool;
    pub(crate) use loom::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

    /// A reader-writer lock: loom's.
    #[cfg(feature = "alloc")]
    pub(crate) struct RwLock<T>(loom::sync::RwLock<T>);

    #[cfg(feature = "alloc")]
    impl<T> RwLock<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(loom::sync::RwLock::new(value))
        }

        #[inline]
        pub(crate) fn read(&self) -> loom::sync::RwLockReadGuard<'_, T> {
            self.0.read().expect("loom rwlock poisoned")
        }

        #[inline]
        pub(crate) fn write(&self) -> loom::sync::RwLockWriteGuard<'_, T> {
            self.0.write().expect("loom rwlock poisoned")
        }
    }

    /// A mutual-exclusion lock: loom's, so the model sees every
    /// acquisition.
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(loom::sync::Mutex::new(value))
        }

        #[inline]
        pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
            // A poisoned lock means another modelled thread panicked; the
            // model already failed, so propagate.
            self.0.lock().expect("loom mutex poisoned")
        }
    }
}

pub(crate) use imp::*;

/// Pads and aligns a value to 128 bytes so two areas never share a cache
/// line (or the adjacent-line prefetch pair on x86). Linux packs its
/// `io_tlb_area`s together, which makes two CPUs' areas bounce one line.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct CachePadded<T>(pub(crate) T);

impl<T> core::ops::Deref for CachePadded<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}
