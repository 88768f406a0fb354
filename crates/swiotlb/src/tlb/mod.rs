//! Tlbs: a named set of pools of one kind that may grow, and the
//! [`Platform`] that picks the one serving each device.
//!
//! Linux has one concept: an `io_tlb_mem` is a list of pools that may grow
//! (`can_grow`), and each device points at the one that serves it. An
//! [`IoTlb`] is that: a first [`Pool`] and, when it is given a
//! [`Growth`] (a provider of memory and the hooks that prepare it), the
//! pools it adds. Every tlb has the same verbs, whatever its kind and
//! whether it grows: [`map`](IoTlb::map) and
//! [`map_with_attrs`](IoTlb::map_with_attrs), [`map_sg`](IoTlb::map_sg),
//! the raw API ([`map_raw`](IoTlb::map_raw) and friends), coherent
//! allocations, waiting and deferral ([`map_async`](IoTlb::map_async),
//! [`bounce_deferred_raw`](IoTlb::bounce_deferred_raw)), and
//! [`stats`](IoTlb::stats).
//!
//! | to build                                   | use                                                   |
//! |--------------------------------------------|-------------------------------------------------------|
//! | a fixed pool                               | [`IoTlb::new`]`(TlbKind::Default, pool)`              |
//! | a pool that grows                          | [`IoTlb::growing`], or [`IoTlb::with_growth`] on yours |
//! | a restricted device (`restricted-dma-pool`)| [`IoTlb::restricted`], bound with [`Device::with_restricted_tlb`] |
//! | a high (64-bit) pool beside the low one    | [`IoTlb::new`]`(TlbKind::High, pool)` in a [`Platform`] |
//! | a device tree                              | [`Platform::from_dt`]                                 |
//!
//! A tlb with no growth is a fixed tlb and pays nothing for the set: its
//! maps and unmaps reach the first pool without a lock (`swiotlb bench`
//! prints the ratio against a bare [`Pool`]). A growing tlb also searches
//! its first pool first, as Linux walks its pool list from the default
//! pool, then the grown ones under the set's read lock.
//!
//! A restricted tlb always bounces (Linux sets `force_bounce` on a
//! restricted `io_tlb_mem`) and serves only the devices bound to it.
//! Linux never lets a restricted pool grow; here that is the platform's
//! choice: give the tlb a [`Growth`] and it grows like any other.
//!
//! Lock order: the queue, then the grown-pool set, then a pool's area
//! locks. Platform hooks and the provider are never called under any of
//! them, and deferral callbacks and wakeups run after every lock is
//! dropped.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ptr::NonNull;

use crate::addr::{DmaAddr, PhysAddr};
use crate::attrs::Attrs;
use crate::device::Device;
use crate::direction::Direction;
use crate::error::{Error, FailReason, Result};
use crate::map::{
    Bouncing, DmaBuffer, Held, MapFailed, MapOptions, Mapping, Owner, RawBuffer, SgEntry,
};
use crate::pool::{Bounce, Fast, Policy, Pool};
use crate::provider::{Backing, ProviderError};
use crate::stats::Stats;
use crate::sync::{AtomicU64, Ordering};
use crate::translate::Translate;

#[cfg(feature = "checker")]
use crate::checker::{
    Caller, Hook, InPool,
    MapKind::{Sg, Single},
};

mod clock;
mod future;
mod grow;
pub mod platform;
mod queue;
mod set;

pub use clock::{Clock, ManualClock};
pub use future::MapFuture;
pub use grow::{GrowConfig, Growth};
pub use platform::{MapRegion, Platform};
pub use queue::{Deferral, Ticket};

pub use crate::pool::Coherent;

use grow::{DynHooks, DynProvider, Grow, Grower, TransientFailed};
#[cfg(all(feature = "std", not(swiotlb_loom)))]
use queue::SendPtr;
use queue::{Queue, QueueCounters};

/// What a tlb is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlbKind {
    /// The default tlb, in low memory (below 4 GiB unless the platform
    /// puts it elsewhere), named `default`: serves every device nothing
    /// else serves.
    Default,
    /// The high tlb, anywhere, named `swiotlb-hi` (the debugfs directory
    /// of the RFC that proposed it): serves devices that reach all of it.
    High,
    /// A restricted tlb, named after its reserved-memory node: serves only
    /// the devices bound to it, and always bounces.
    Restricted,
}

impl TlbKind {
    /// The name a tlb of this kind gets unless it is given one:
    /// `default`, `swiotlb-hi`, `restricted`.
    pub const fn default_name(self) -> &'static str {
        match self {
            TlbKind::Default => "default",
            TlbKind::High => "swiotlb-hi",
            TlbKind::Restricted => "restricted",
        }
    }
}

/// A tlb's counters: its pools' statistics summed, and those of growth
/// and of the queue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlbStats {
    /// Pools now: the first and the grown ones (transient ones not
    /// counted).
    pub pools: u64,
    /// Pools added by growth since creation.
    pub pools_added: u64,
    /// Grown pools given back since creation.
    pub pools_removed: u64,
    /// Growths that failed (provider out of memory, a hook failed),
    /// transient pools included (a provider or hooks that cannot work
    /// without sleeping do not count: nothing was tried). A map that
    /// failed for it returns [`Error::GrowFailed`].
    pub grow_failures: u64,
    /// Transient pools now.
    pub transient_pools: u64,
    /// Slots in transient pools now (Linux `io_tlb_transient_nslabs`).
    pub io_tlb_transient_nslabs: u64,
    /// Transient pools made since creation.
    pub transient_made: u64,
    /// Bytes held now: every pool, transient ones included.
    pub bytes_held: u64,
    /// The most bytes ever held at once.
    pub peak_bytes_held: u64,
    /// Requests that waited or were deferred (FreeBSD busdma
    /// `total_deferred`).
    pub deferred: u64,
    /// Nanoseconds those requests spent queued, in all (FreeBSD
    /// `total_deferred_time`).
    pub deferred_ns: u64,
    /// The longest a request stayed queued, in nanoseconds.
    pub max_wait_ns: u64,
    /// Requests queued now: waiters and deferred requests.
    pub waiters: u64,
    /// Waits that ended in [`Error::TimedOut`].
    pub timeouts: u64,
    /// Queued requests cancelled before they completed.
    pub cancelled: u64,
    /// Deferral callbacks that panicked (caught: see
    /// [`IoTlb::bounce_deferred_raw`]).
    pub callback_panics: u64,
    /// The pools' own counters, summed (transient pools included), with
    /// the failures the tlb counts itself. For a tlb that has only ever
    /// had its first pool the high-water mark is exact; otherwise it is
    /// the sum of the pools' marks, an upper bound of the tlb's.
    pub pool: Stats,
}

impl core::fmt::Display for TlbStats {
    /// The pools' counters as [`Stats`] prints them, then, debugfs style,
    /// each counter of growth and of the queue that is not zero
    /// (`io_tlb_transient_nslabs` as Linux names it).
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.pool)?;
        let extra = [
            ("pools", if self.pools > 1 { self.pools } else { 0 }),
            ("pools_added", self.pools_added),
            ("pools_removed", self.pools_removed),
            ("grow_failures", self.grow_failures),
            ("transient_pools", self.transient_pools),
            ("io_tlb_transient_nslabs", self.io_tlb_transient_nslabs),
            ("transient_made", self.transient_made),
            ("deferred", self.deferred),
            ("deferred_ns", self.deferred_ns),
            ("max_wait_ns", self.max_wait_ns),
            ("waiters", self.waiters),
            ("timeouts", self.timeouts),
            ("cancelled", self.cancelled),
            ("callback_panics", self.callback_panics),
        ];
        for (name, value) in extra.into_iter().filter(|&(_, v)| v != 0) {
            write!(f, "\n{name} {value}")?;
        }
        Ok(())
    }
}

/// Where a bounce was placed.
pub(crate) struct Placed<P: Policy> {
    pub(crate) bounce: Bounce,
    pub(crate) pool: NonNull<Pool<P>>,
    pub(crate) held: Held,
}

/// A bounce, the pool holding it, and how long that pool lives.
pub(crate) type Found<P> = (Bounce, NonNull<Pool<P>>, Held);

pub(crate) fn is_full(e: &Error) -> bool {
    matches!(e, Error::PoolFull { .. })
}

/// A tlb: a named set of pools of one kind (see the [module
/// documentation](self)).
pub struct IoTlb<P: Policy = Fast> {
    /// The first pool: never given back, searched first, without a lock.
    /// Declared before `backing`, so that it drops before its memory is
    /// given back.
    first: Pool<P>,
    /// Growth, transient pools and shrinking; `None` for a fixed tlb.
    grower: Option<Box<Grower<P>>>,
    queue: Queue<P>,
    qcounters: QueueCounters,
    /// Failures counted by the tlb itself (a full tlb is not one pool's
    /// failure).
    failures: [AtomicU64; FailReason::COUNT],
    clock: Arc<dyn Clock>,
    /// How long a caller that may sleep waits, in nanoseconds.
    wait_timeout: u64,
    name: String,
    kind: TlbKind,
    /// The first pool's memory, when it came from a provider.
    backing: Option<Backing<DynProvider, DynHooks, P>>,
}

impl<P: Policy> core::fmt::Debug for IoTlb<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IoTlb")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("first", &self.first)
            .field("grows", &self.grower.is_some())
            .field("pools", &self.pool_count())
            .finish_non_exhaustive()
    }
}

impl IoTlb {
    /// A growing tlb of [`Fast`] pools of `kind`, whose first pool, of
    /// [`GrowConfig::start`] bytes, comes from the growth's provider too.
    /// For another policy use [`IoTlb::growing_with_policy`].
    ///
    /// May sleep (the first pool is built here).
    ///
    /// # Errors
    /// As [`IoTlb::growing_with_policy`].
    pub fn growing(kind: TlbKind, growth: Growth) -> core::result::Result<Self, ProviderError> {
        Self::growing_with_policy(kind, growth)
    }
}

impl<P: Policy> IoTlb<P> {
    /// A fixed tlb of `kind` over `pool`, named after its kind
    /// ([`TlbKind::default_name`]).
    pub fn new(kind: TlbKind, pool: Pool<P>) -> Self {
        Self {
            first: pool,
            grower: None,
            queue: Queue::new(),
            qcounters: QueueCounters::default(),
            failures: Default::default(),
            clock: clock::default_clock(),
            wait_timeout: 1_000_000_000,
            name: String::from(kind.default_name()),
            kind,
            backing: None,
        }
    }

    /// A fixed restricted tlb named `name` (its reserved-memory node's
    /// name) over `pool`.
    pub fn restricted(name: impl Into<String>, pool: Pool<P>) -> Self {
        Self::new(TlbKind::Restricted, pool).with_name(name)
    }

    /// [`IoTlb::growing`] for any policy: a growing tlb of `kind` whose
    /// first pool, of
    /// [`GrowConfig::start`] bytes, comes from the growth's provider too.
    ///
    /// May sleep (the first pool is built here).
    ///
    /// # Errors
    /// [`ProviderError::Pool`] with [`Error::BadConfig`] if `start` or
    /// `grow_by` is smaller than one segment, or `max` smaller than
    /// `start`; otherwise as [`crate::provider::pool_from_provider`].
    pub fn growing_with_policy(
        kind: TlbKind,
        growth: Growth,
    ) -> core::result::Result<Self, ProviderError> {
        let c = growth.config;
        grow::check(&growth, c.start)?;
        let provided = crate::provider::build::<P, _, _>(
            growth.provider.clone(),
            growth.hooks.clone(),
            c.start,
            c.below,
            c.pool,
            c.dma_bits,
            crate::provider::Sleep::Allowed,
        )?;
        let (pool, backing) = provided.into_parts();
        let mut tlb = Self::new(kind, pool);
        tlb.backing = Some(backing);
        tlb.install(growth);
        Ok(tlb)
    }

    /// This tlb, growing by `growth` from now on; its first pool stays
    /// the one it has ([`GrowConfig::start`] is not used). If the first
    /// pool zeroes freed slots ([`PoolConfig::zero_on_free`]), so does
    /// every pool the tlb grows, whatever [`GrowConfig::pool`] says: one
    /// tlb, one promise.
    ///
    /// # Errors
    /// [`ProviderError::Pool`] with [`Error::BadConfig`] if `grow_by` is
    /// smaller than one segment, or `max` smaller than the first pool.
    ///
    /// [`PoolConfig::zero_on_free`]: crate::PoolConfig::zero_on_free
    pub fn with_growth(mut self, mut growth: Growth) -> core::result::Result<Self, ProviderError> {
        grow::check(&growth, self.first.len())?;
        growth.config.pool.zero_on_free |= self.first.zeroes_on_free();
        self.install(growth);
        Ok(self)
    }

    fn install(&mut self, growth: Growth) {
        self.wait_timeout = growth.config.wait_timeout;
        let now = self.clock.now_ns();
        self.grower = Some(Box::new(Grower::new(growth, self.first.len(), now)));
    }

    /// Renames the tlb.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The clock for idle times, waits and deferral times. Set it before
    /// the tlb is shared.
    ///
    /// A tlb given none reads the standard library's monotonic clock under
    /// `std` (a private fallback, so that idle-time shrinking works with no
    /// set-up; `swiotlb_host::StdClock` is the same clock by name), and
    /// without `std` one that stands still: idle times and deferral times
    /// then read zero and no grown pool is ever given back, so a kernel
    /// passes its own clock here.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        if let Some(g) = &self.grower {
            let now = clock.now_ns();
            g.last_grow.store(now, Ordering::Relaxed);
            g.last_shrink.store(now, Ordering::Relaxed);
        }
        self.clock = clock;
        self
    }

    /// How long a caller that may sleep waits for slots before it fails
    /// with [`Error::TimedOut`] (`std` only), in nanoseconds; one second
    /// unless set here or by [`GrowConfig::wait_timeout`].
    pub fn with_wait_timeout(mut self, ns: u64) -> Self {
        self.wait_timeout = ns;
        self
    }

    /// The tlb's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the tlb is for.
    pub fn kind(&self) -> TlbKind {
        self.kind
    }

    /// The first pool, for its geometry and statistics. Map through the
    /// tlb's own verbs: the pool's do not know that a restricted tlb
    /// always bounces, nor about the other pools.
    pub fn first_pool(&self) -> &Pool<P> {
        &self.first
    }

    /// How the tlb grows; `None` for a fixed tlb.
    pub fn grow_config(&self) -> Option<&GrowConfig> {
        self.grower().map(Grower::config)
    }

    #[inline]
    pub(crate) fn grower(&self) -> Option<&Grower<P>> {
        self.grower.as_deref()
    }

    /// Bytes held now: every pool, transient ones included.
    pub fn bytes_held(&self) -> usize {
        match self.grower() {
            Some(g) => g.held.load(Ordering::Relaxed),
            None => self.first.len(),
        }
    }

    /// Pools now: the first and the grown ones.
    pub fn pool_count(&self) -> usize {
        1 + self.grower().map_or(0, |g| g.pools.read().len())
    }

    /// The start addresses of the pools (the first and grown ones), in
    /// address order.
    pub fn pool_starts(&self) -> Vec<PhysAddr> {
        let mut v = Vec::from([self.first.start()]);
        if let Some(g) = self.grower() {
            v.extend(g.pools.read().iter().map(|m| m.pool.start()));
        }
        v.sort_unstable();
        v
    }

    /// The index, in address order, of the grown pool holding `phys`: the
    /// lookup every unmap outside the first pool makes. For the lookup
    /// benchmark.
    #[doc(hidden)]
    pub fn pool_index_of(&self, phys: PhysAddr) -> Option<usize> {
        self.grower()?.pools.read().index_of(phys)
    }

    /// The tlb's counters and its pools' summed statistics.
    pub fn stats(&self) -> TlbStats {
        let mut pool = self.first.stats();
        let mut add = |s: Stats| {
            pool.io_tlb_nslabs += s.io_tlb_nslabs;
            pool.io_tlb_used += s.io_tlb_used;
            pool.io_tlb_used_hiwater += s.io_tlb_used_hiwater;
            pool.area_used.extend(s.area_used);
            for (a, b) in pool.failures.iter_mut().zip(s.failures) {
                *a += b;
            }
            pool.bytes_to_device += s.bytes_to_device;
            pool.bytes_from_device += s.bytes_from_device;
            pool.direct_maps += s.direct_maps;
            // A sum of marks is a bound, not the tlb's mark.
            pool.hiwater_exact = false;
        };
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = TlbStats {
            pools: 1,
            bytes_held: self.first.len() as u64,
            peak_bytes_held: self.first.len() as u64,
            ..TlbStats::default()
        };
        if let Some(g) = self.grower() {
            {
                let pools = g.pools.read();
                for m in pools.iter() {
                    add(m.pool.stats());
                }
                out.pools += pools.len() as u64;
            }
            {
                let t = g.transients.lock();
                for m in t.iter() {
                    add(m.pool.stats());
                }
                out.transient_pools = t.len() as u64;
                out.io_tlb_transient_nslabs = t.iter().map(|m| u64::from(m.pool.nslabs())).sum();
            }
            if ld(&g.pools_added) != 0 || ld(&g.transient_made) != 0 {
                pool.hiwater_exact = false;
            }
            out.pools_added = ld(&g.pools_added);
            out.pools_removed = ld(&g.pools_removed);
            out.grow_failures = ld(&g.grow_failures);
            out.transient_made = ld(&g.transient_made);
            out.bytes_held = g.held.load(Ordering::Relaxed) as u64;
            out.peak_bytes_held = g.peak_held.load(Ordering::Relaxed) as u64;
        }
        for (a, b) in pool.failures.iter_mut().zip(&self.failures) {
            *a += ld(b);
        }
        let q = &self.qcounters;
        out.deferred = ld(&q.deferred);
        out.deferred_ns = ld(&q.deferred_ns);
        out.max_wait_ns = ld(&q.max_wait_ns);
        out.waiters = self.queue.queued.load(Ordering::Relaxed) as u64;
        out.timeouts = ld(&q.timeouts);
        out.cancelled = ld(&q.cancelled);
        out.callback_panics = ld(&q.callback_panics);
        out.pool = pool;
        out
    }

    pub(crate) fn count_failure(&self, e: &Error) {
        self.failures[e.reason() as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// How this tlb's maps bounce: a restricted tlb always bounces (Linux
    /// sets `force_bounce` on a device's restricted `io_tlb_mem`).
    #[inline]
    pub(crate) fn bouncing(&self) -> Bouncing {
        match self.kind {
            TlbKind::Restricted => Bouncing::Always,
            TlbKind::Default | TlbKind::High => Bouncing::IfNeeded,
        }
    }

    /// Tries `attempt` on the first pool, then on the grown pools starting
    /// where the last success was. Returns the first success, the first
    /// error that is not "full", or the last "full" error. The grown pools
    /// are tried under the set's read lock, so no pool is removed while an
    /// allocation in it is being made.
    #[inline]
    pub(crate) fn try_pools<F>(&self, attempt: &mut F) -> Result<Found<P>>
    where
        F: FnMut(&Pool<P>) -> Result<Bounce> + ?Sized,
    {
        let mut last = match attempt(&self.first) {
            Ok(b) => return Ok((b, NonNull::from(&self.first), Held::Lasting)),
            Err(e) if is_full(&e) => e,
            Err(e) => return Err(e),
        };
        let Some(g) = self.grower() else {
            return Err(last);
        };
        let pools = g.pools.read();
        let n = pools.len();
        if n == 0 {
            return Err(last);
        }
        let first = g.hint.load(Ordering::Relaxed) % n;
        for k in 0..n {
            let i = (first + k) % n;
            let pool: &Pool<P> = &pools[i].pool;
            match attempt(pool) {
                Ok(b) => {
                    if i != first {
                        g.hint.store(i, Ordering::Relaxed);
                    }
                    return Ok((b, NonNull::from(pool), Held::Grown));
                }
                Err(e) if is_full(&e) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// [`IoTlb::try_pools`] with an allocation-only `attempt` for `size`
    /// bytes of `src`, then the copy into the slots, after the set's lock
    /// is dropped (a copy of 256 KiB must not hold up a growth).
    ///
    /// # Safety
    /// `src` is valid for reads of `size` bytes and unaliased, as for
    /// [`Pool::bounce_raw`], and `attempt` allocates for `src`/`size`.
    #[inline]
    pub(crate) unsafe fn try_pools_copy<F>(
        &self,
        attempt: &mut F,
        src: *mut u8,
        size: usize,
    ) -> Result<Found<P>>
    where
        F: FnMut(&Pool<P>) -> Result<Bounce> + ?Sized,
    {
        let (b, pool, held) = self.try_pools(attempt)?;
        // SAFETY: `pool` holds `b`'s slots, just allocated: the tlb gives
        // back no pool holding a live allocation, so it is valid here.
        let p = unsafe { pool.as_ref() };
        // SAFETY: `b` is a live allocation of `p` that `attempt` made for
        // `src` and `size` (this function's contract), so the slots hold
        // `size` bytes from the bounce address.
        // - `src` is valid for reads of `size` bytes and unaliased (this
        //   function's contract).
        unsafe { p.copy_in(&b, src, size) };
        Ok((b, pool, held))
    }

    /// The pool holding bounce address `phys`: the first or a grown one.
    pub(crate) fn pool_of(&self, phys: PhysAddr) -> Result<(NonNull<Pool<P>>, Held)> {
        if self.first.contains(phys) {
            return Ok((NonNull::from(&self.first), Held::Lasting));
        }
        self.grower()
            .and_then(|g| g.find(phys))
            .map(|p| (p, Held::Grown))
            .ok_or(Error::NoPool)
    }

    /// Where the completed queued bounce `b` lives.
    pub(crate) fn placed(&self, b: Bounce) -> Result<Placed<P>> {
        let (pool, held) = self.pool_of(b.phys)?;
        Ok(Placed {
            bounce: b,
            pool,
            held,
        })
    }

    /// Gives back the slots of a queued bounce nobody will unmap (its
    /// callback panicked, its future was dropped unseen), without copying
    /// anything.
    pub(crate) fn give_back(&self, b: &Bounce) {
        if self.first.contains(b.phys) {
            let _ = self.first.release(b.start, b.nslots, b.dma, 0, 0);
            return;
        }
        if let Some(g) = self.grower() {
            // Under the set's read lock: the pool cannot be removed while
            // its slots are given back (the grace rule).
            let pools = g.pools.read();
            if let Some(m) = set::find(&pools, b.phys) {
                let pool: &Pool<P> = &m.pool;
                let _ = pool.release(b.start, b.nslots, b.dma, 0, 0);
            }
        }
    }

    /// Serves the queue if a request waits in it.
    #[inline]
    pub(crate) fn serve_if_queued(&self) {
        // No lost wakeup without a fence: the enqueuer stores the queue
        // length, then serves the queue, which takes every area lock of
        // every pool while it tries them; slots given back before this
        // load were given back under one of those locks. Either the
        // enqueuer took that lock after the release (and sees the slots
        // free), or before it, and then its store happened before this
        // load (the loom model `deferred_vs_unmap` checks both orders).
        if self.queue.queued.load(Ordering::Acquire) > 0 {
            self.service();
        }
    }

    /// Runs `release`, which gives back slots of a grown pool, under the
    /// grown-pool set's read lock: [`IoTlb::maintain`] removes a grown
    /// pool under the write lock, after checking that it is idle, so it
    /// waits for every release in flight, and a pool it finds idle holds
    /// no slot anyone could still be giving back. This is the grace
    /// period: `Pool::release` touches the pool after the unlock that may
    /// make it idle, and its `&self` must stay valid until it returns.
    #[inline(never)]
    pub(crate) fn guard_release(&self, release: &dyn Fn()) {
        let _pools = self.grower().map(|g| g.pools.read());
        release();
    }

    /// The slots of a mapping in the pool starting at `pool_start`, held
    /// as `held` says, were just given back. The pool may be gone by the
    /// time this returns.
    #[inline(never)]
    pub(crate) fn after_release(&self, pool_start: PhysAddr, held: Held) {
        if held == Held::Transient {
            if let Some(g) = self.grower() {
                g.drop_transient(pool_start);
            }
        }
        self.serve_if_queued();
    }

    /// Bounces for `dev` wherever there is room: the pools, then growth
    /// (callers that may sleep) or a transient pool (callers that may
    /// not), then waiting (callers that may sleep, `std`).
    ///
    /// # Safety
    /// As [`Pool::bounce_raw`].
    #[inline]
    unsafe fn place<T: Translate + Clone + Send + Sync + 'static>(
        &self,
        dev: &Device<T>,
        orig: PhysAddr,
        cpu: *mut u8,
        size: usize,
        attrs: Attrs,
        opts: MapOptions,
    ) -> Result<Placed<P>> {
        let sleeps = attrs.contains(Attrs::MAY_SLEEP);
        // Callers that may sleep queue behind earlier waiters (FIFO);
        // others cannot wait, so they try at once.
        let behind = sleeps && self.queue.queued.load(Ordering::Acquire) > 0;
        let full = if behind {
            None
        } else {
            // The first pool first, exactly as a bare pool maps: no lock,
            // nothing more (a fixed tlb's whole map).
            // SAFETY: `cpu` is valid for reads and writes of `size` bytes
            // and unreferenced until the unmap, and `orig` is its physical
            // address (this function's contract, `bounce_inner`'s).
            match unsafe { self.first.bounce_inner(dev, orig, cpu, size, opts) } {
                Ok(bounce) => {
                    return Ok(Placed {
                        bounce,
                        pool: NonNull::from(&self.first),
                        held: Held::Lasting,
                    })
                }
                Err(e) if is_full(&e) && (sleeps || self.grower.is_some()) => Some(e),
                Err(e) => {
                    self.count_failure(&e);
                    return Err(e);
                }
            }
        };
        // SAFETY: `cpu` is valid for reads and writes of `size` bytes and
        // unreferenced until the unmap, and `orig` is its physical address
        // (this function's contract).
        unsafe { self.place_slow(dev, orig, cpu, size, attrs, opts, behind, full) }
    }

    /// [`IoTlb::place`] once the pools are full (`full`) or earlier
    /// waiters are queued (`behind`).
    ///
    /// # Safety
    /// As [`Pool::bounce_raw`].
    #[cold]
    #[expect(clippy::too_many_arguments, reason = "the state of one place call")]
    #[cfg_attr(
        all(feature = "std", not(swiotlb_loom)),
        expect(
            unused_assignments,
            reason = "a caller that may sleep waits rather than fail as full"
        )
    )]
    unsafe fn place_slow<T: Translate + Clone + Send + Sync + 'static>(
        &self,
        dev: &Device<T>,
        orig: PhysAddr,
        cpu: *mut u8,
        size: usize,
        attrs: Attrs,
        opts: MapOptions,
        behind: bool,
        mut full: Option<Error>,
    ) -> Result<Placed<P>> {
        let mut attempt = |pool: &Pool<P>| pool.bounce_alloc(dev, orig, cpu, size, opts);
        // Whether the tlb tried to add memory for this caller and its
        // provider (or a hook) failed.
        let mut grow_failed = false;
        if !behind && self.grower.is_some() {
            // The grown pools (the first one again too: slots may have
            // come free since).
            // SAFETY: `cpu` is valid for reads of `size` bytes and
            // unreferenced (this function's contract), and `attempt`
            // allocates for exactly `cpu` and `size`.
            match unsafe { self.try_pools_copy(&mut attempt, cpu, size) } {
                Ok((bounce, pool, held)) => return Ok(Placed { bounce, pool, held }),
                Err(e) if is_full(&e) => full = Some(e),
                Err(e) => {
                    self.count_failure(&e);
                    return Err(e);
                }
            }
        }
        if attrs.contains(Attrs::MAY_SLEEP) {
            // Grow while growth helps. Each growth serves the queue first
            // (`grow` calls `service`), so a caller behind earlier waiters
            // takes room only once they have theirs: it grows for them
            // and then joins the queue.
            let mut behind = behind;
            loop {
                match self.grow() {
                    Grow::Grew => {}
                    Grow::Failed(_) => {
                        grow_failed = true;
                        break;
                    }
                    Grow::Busy | Grow::Limit => break,
                }
                if behind {
                    behind = self.queue.queued.load(Ordering::Acquire) > 0;
                    if behind {
                        continue;
                    }
                }
                // SAFETY: `cpu` is valid for reads of `size` bytes and
                // unreferenced (this function's contract), and `attempt`
                // allocates for exactly `cpu` and `size`.
                match unsafe { self.try_pools_copy(&mut attempt, cpu, size) } {
                    Ok((bounce, pool, held)) => return Ok(Placed { bounce, pool, held }),
                    Err(e) if is_full(&e) => full = Some(e),
                    Err(e) => {
                        self.count_failure(&e);
                        return Err(e);
                    }
                }
            }
            // Waiting parks a real OS thread, which loom cannot model:
            // under `swiotlb_loom` a caller that would wait fails as full
            // instead (the loom models are built never to need it).
            #[cfg(all(feature = "std", not(swiotlb_loom)))]
            {
                let device = dev.clone();
                let cpu = SendPtr(cpu);
                let attempt = Box::new(move |pool: &Pool<P>| {
                    let cpu = cpu;
                    pool.bounce_alloc(&device, orig, cpu.0, size, opts)
                });
                // SAFETY: `cpu` is valid for reads of `size` bytes and
                // unreferenced until the unmap (this function's contract),
                // and this caller does not return before the request
                // completes or is cancelled, so it stays valid as long as
                // the queue may copy from it.
                let found = unsafe { self.wait(attempt, cpu, size) };
                return found.map(|(bounce, pool, held)| Placed { bounce, pool, held });
            }
        } else {
            self.want_growth();
            // SAFETY: `cpu` is valid for reads and writes of `size` bytes and
            // unreferenced until the unmap, and `orig` is its physical address
            // (this function's contract).
            match unsafe { self.bounce_transient(dev, orig, cpu, size, opts) } {
                Ok(p) => return Ok(p),
                Err(TransientFailed::Provider) => grow_failed = true,
                Err(TransientFailed::NotTried) => {}
            }
        }
        let e = match full {
            Some(Error::PoolFull {
                requested,
                free,
                largest_run,
            }) if grow_failed => Error::GrowFailed {
                requested,
                free,
                largest_run,
            },
            Some(e) => e,
            None if grow_failed => Error::GrowFailed {
                requested: 0,
                free: 0,
                largest_run: 0,
            },
            None => Error::PoolFull {
                requested: 0,
                free: 0,
                largest_run: 0,
            },
        };
        self.count_failure(&e);
        Err(e)
    }

    /// The safe mapping of `buffer`, bounced as `p` says.
    pub(crate) fn mapping<B: DmaBuffer>(
        &self,
        p: Placed<P>,
        buffer: RawBuffer<B>,
        dir: Direction,
    ) -> Mapping<'_, B, P> {
        // SAFETY: `p.pool` points at a pool of this tlb that holds `p`'s
        // slots; the tlb gives back no pool holding a live allocation, so
        // it is valid here.
        let pool = unsafe { p.pool.as_ref() };
        // SAFETY: `p.bounce` was allocated in `pool` for this buffer's
        // region and is owned by the new mapping alone; `pool` lives as
        // `p.held` says: the first pool as long as the tlb, a grown or
        // transient one until the mapping's slots are given back (the
        // tlb gives back a grown pool only when it holds no slot and no
        // guarded release runs in it, a transient one only after its
        // mapping's release).
        unsafe { Mapping::bounced(pool, Owner::Tlb(self), p.held, buffer, dir, p.bounce) }
    }

    /// A safe map of `buffer` (taken apart) for `dev`: directly when this
    /// tlb allows it and the device reaches the buffer, else bounced.
    #[inline]
    pub(crate) fn map_buffer<B: DmaBuffer, T: Translate + Clone + Send + Sync + 'static>(
        &self,
        dev: &Device<T>,
        buffer: RawBuffer<B>,
        dir: Direction,
        attrs: Attrs,
    ) -> core::result::Result<Mapping<'_, B, P>, (Error, RawBuffer<B>)> {
        let (ptr, len) = (buffer.ptr(), buffer.len());
        let (phys, direct) = dev.direct(ptr.as_ptr(), len);
        if direct && self.bouncing() == Bouncing::IfNeeded {
            let dma = dev.phys_to_dma(phys);
            return Ok(Mapping::direct(Owner::Tlb(self), buffer, dma, dir));
        }
        self.bounce_buffer(dev, phys, buffer, dir, attrs)
    }

    /// The bounce half of a safe map: `buffer` (physical address `phys`)
    /// through this tlb, whatever the device could reach.
    #[inline]
    pub(crate) fn bounce_buffer<B: DmaBuffer, T: Translate + Clone + Send + Sync + 'static>(
        &self,
        dev: &Device<T>,
        phys: PhysAddr,
        buffer: RawBuffer<B>,
        dir: Direction,
        attrs: Attrs,
    ) -> core::result::Result<Mapping<'_, B, P>, (Error, RawBuffer<B>)> {
        let sleeps = attrs.contains(Attrs::MAY_SLEEP);
        // Callers that may sleep queue behind earlier waiters (FIFO);
        // others cannot wait, so they try at once.
        let behind = sleeps && self.queue.queued.load(Ordering::Acquire) > 0;
        let (full, buffer) = if behind {
            (None, buffer)
        } else {
            // The first pool first, exactly as a bare pool maps: no lock,
            // nothing more (a fixed tlb's whole map).
            match self
                .first
                .bounce_buffer_in(Owner::Tlb(self), dev, phys, buffer, dir)
            {
                Ok(m) => return Ok(m),
                Err((e, buffer)) if is_full(&e) && (sleeps || self.grower.is_some()) => {
                    (Some(e), buffer)
                }
                Err((e, buffer)) => {
                    self.count_failure(&e);
                    return Err((e, buffer));
                }
            }
        };
        let (ptr, len) = (buffer.ptr(), buffer.len());
        // SAFETY: `ptr` is valid for reads and writes of `len` bytes and
        // nothing else accesses them while the buffer is taken apart
        // (`DmaBuffer`); the returned mapping holds the parts and touches
        // the bytes only through the pool's copies until unmap, and a
        // failed map gives the parts back untouched. `phys` is their
        // physical address.
        let r = unsafe {
            self.place_slow(
                dev,
                phys,
                ptr.as_ptr(),
                len,
                attrs,
                MapOptions::default(),
                behind,
                full,
            )
        };
        match r {
            Ok(p) => Ok(self.mapping(p, buffer, dir)),
            Err(error) => Err((error, buffer)),
        }
    }

    /// Maps a buffer for `dev`, taking ownership of it: directly when the
    /// device reaches it and is not forced to bounce (never in a
    /// restricted tlb), else through the tlb's pools; a growing tlb grows
    /// for it or makes it a transient pool as [`Attrs::MAY_SLEEP`] says
    /// (see [`IoTlb::map_with_attrs`]).
    ///
    /// # Errors
    /// A [`MapFailed`] with the reason and the buffer.
    #[inline]
    pub fn map<B: DmaBuffer, T: Translate + Clone + Send + Sync + 'static>(
        &self,
        dev: &Device<T>,
        buffer: B,
        dir: Direction,
    ) -> core::result::Result<Mapping<'_, B, P>, MapFailed<B>> {
        self.map_with_attrs(dev, buffer, dir, Attrs::NONE)
    }

    /// [`IoTlb::map`] with attributes. With [`Attrs::MAY_SLEEP`] a growing
    /// tlb may grow on this call, and under `std` the caller waits (in
    /// FIFO order, up to the wait timeout) for slots when the tlb cannot
    /// grow; without it a full growing tlb makes a transient pool for the
    /// mapping if its provider can without sleeping, and asks for a
    /// background growth.
    ///
    /// # Errors
    /// A [`MapFailed`] with the reason and the buffer; [`Error::TimedOut`]
    /// after a wait.
    #[inline]
    pub fn map_with_attrs<B: DmaBuffer, T: Translate + Clone + Send + Sync + 'static>(
        &self,
        dev: &Device<T>,
        buffer: B,
        dir: Direction,
        attrs: Attrs,
    ) -> core::result::Result<Mapping<'_, B, P>, MapFailed<B>> {
        self.map_buffer(dev, RawBuffer::new(buffer), dir, attrs)
            .map_err(|(error, buffer)| MapFailed::new(error, buffer))
    }

    /// Maps several buffers as one scatter-gather list, all or nothing,
    /// each as [`IoTlb::map`] maps it.
    ///
    /// # Errors
    /// [`Error::SegmentTooLong`] or the first mapping error, with every
    /// buffer given back in order; nothing stays mapped.
    pub fn map_sg<B: DmaBuffer, T: Translate + Clone + Send + Sync + 'static>(
        &self,
        dev: &Device<T>,
        buffers: Vec<B>,
        dir: Direction,
    ) -> core::result::Result<Vec<Mapping<'_, B, P>>, MapFailed<Vec<B>>> {
        let r = crate::map::map_sg_buffers_by(buffers, dev.max_segment_size(), |b| {
            self.map_buffer(dev, b, dir, Attrs::NONE)
        });
        if let Err(f) = &r {
            if let Error::SegmentTooLong { .. } = f.error {
                self.count_failure(&f.error);
            }
        }
        r
    }

    /// A future that maps a buffer for `dev`: at once if there is room,
    /// else once slots free up or the tlb grows, in FIFO order with every
    /// other queued request (the request asks for a background growth).
    /// Dropping the future cancels the request cleanly; if it had already
    /// completed, its slots are given back.
    pub fn map_async<B: DmaBuffer, T: Translate + Clone + Send + Sync + 'static>(
        &self,
        dev: &Device<T>,
        buffer: B,
        dir: Direction,
    ) -> MapFuture<'_, B, T, P> {
        MapFuture::new(self, dev.clone(), RawBuffer::new(buffer), dir)
    }

    /// Bounces `size` bytes at `orig` (CPU address `cpu`) for `dev`
    /// through the tlb, whatever the device reaches, growing or making a
    /// transient pool as [`IoTlb::map_with_attrs`] says; with
    /// [`Attrs::MAY_SLEEP`] under `std` it may wait.
    ///
    /// # Errors
    /// As [`Pool::bounce_raw`], and [`Error::TimedOut`].
    ///
    /// # Safety
    /// As [`Pool::bounce_raw`].
    #[cfg_attr(feature = "checker", track_caller)]
    pub unsafe fn bounce_raw<T: Translate + Clone + Send + Sync + 'static>(
        &self,
        dev: &Device<T>,
        orig: PhysAddr,
        cpu: *mut u8,
        size: usize,
        attrs: Attrs,
        opts: MapOptions,
    ) -> Result<Bounce> {
        // SAFETY: this function's contract, passed on.
        let r = unsafe { self.bounce_unchecked(dev, orig, cpu, size, attrs, opts) };
        #[cfg(feature = "checker")]
        if let Ok(b) = &r {
            let caller = core::panic::Location::caller();
            // SAFETY: `cpu` is valid for reads of `size` bytes (this
            // function's contract).
            unsafe {
                self.hook(dev, caller)
                    .mapped(b.dma, cpu, size, None, Single, 1)
            };
        }
        r
    }

    /// [`IoTlb::bounce_raw`] without the checker's hook.
    ///
    /// # Safety
    /// As [`Pool::bounce_raw`].
    pub(crate) unsafe fn bounce_unchecked<T: Translate + Clone + Send + Sync + 'static>(
        &self,
        dev: &Device<T>,
        orig: PhysAddr,
        cpu: *mut u8,
        size: usize,
        attrs: Attrs,
        opts: MapOptions,
    ) -> Result<Bounce> {
        // SAFETY: `cpu` is valid for reads and writes of `size` bytes and
        // unreferenced until the unmap, and `orig` is its physical address
        // (this function's contract).
        unsafe { self.place(dev, orig, cpu, size, attrs, opts) }.map(|p| p.bounce)
    }

    /// Maps `size` bytes at physical address `orig` (CPU address `cpu`)
    /// for `dev`: directly when the device reaches them and is not forced
    /// to bounce (never in a restricted tlb), else as
    /// [`IoTlb::bounce_raw`] does.
    ///
    /// # Errors
    /// As [`IoTlb::bounce_raw`].
    ///
    /// # Safety
    /// As [`Pool::map_raw`].
    #[cfg_attr(feature = "checker", track_caller)]
    pub unsafe fn map_raw<T: Translate + Clone + Send + Sync + 'static>(
        &self,
        dev: &Device<T>,
        orig: PhysAddr,
        cpu: *mut u8,
        size: usize,
        dir: Direction,
    ) -> Result<DmaAddr> {
        // SAFETY: `cpu` is valid for reads and writes of `size` bytes and
        // unreferenced until the unmap, and `orig` is its physical address
        // (this function's contract); the
        // direction does not change what a map may touch.
        unsafe { self.map_raw_with_attrs(dev, orig, cpu, size, dir, Attrs::NONE) }
    }

    /// [`IoTlb::map_raw`] with attributes.
    ///
    /// # Errors
    /// As [`IoTlb::bounce_raw`].
    ///
    /// # Safety
    /// As [`Pool::map_raw`].
    #[cfg_attr(feature = "checker", track_caller)]
    pub unsafe fn map_raw_with_attrs<T: Translate + Clone + Send + Sync + 'static>(
        &self,
        dev: &Device<T>,
        orig: PhysAddr,
        cpu: *mut u8,
        size: usize,
        dir: Direction,
        attrs: Attrs,
    ) -> Result<DmaAddr> {
        let _ = dir;
        // SAFETY: this function's contract, passed on.
        let r = unsafe { self.map_raw_unchecked(dev, orig, cpu, size, attrs) };
        #[cfg(feature = "checker")]
        if let Ok(dma) = r {
            let caller = core::panic::Location::caller();
            // SAFETY: `cpu` is valid for reads of `size` bytes (this
            // function's contract).
            unsafe {
                self.hook(dev, caller)
                    .mapped(dma, cpu, size, Some(dir), Single, 1)
            };
        }
        r
    }

    /// [`IoTlb::map_raw_with_attrs`] without the checker's hook.
    ///
    /// # Safety
    /// As [`Pool::map_raw`].
    pub(crate) unsafe fn map_raw_unchecked<T: Translate + Clone + Send + Sync + 'static>(
        &self,
        dev: &Device<T>,
        orig: PhysAddr,
        cpu: *mut u8,
        size: usize,
        attrs: Attrs,
    ) -> Result<DmaAddr> {
        let direct = self.bouncing() == Bouncing::IfNeeded && dev.maps_directly(orig, size);
        if direct {
            self.first.count_direct();
            return Ok(dev.phys_to_dma(orig));
        }
        // SAFETY: `cpu` is valid for reads and writes of `size` bytes and
        // unreferenced until the unmap, and `orig` is its physical address
        // (this function's contract, `Pool::map_raw`'s, which holds
        // `bounce_raw`'s).
        let b =
            unsafe { self.bounce_unchecked(dev, orig, cpu, size, attrs, MapOptions::default())? };
        Ok(b.dma)
    }

    /// Runs `f` on the pool of this tlb holding `phys` for `dev`, and tells
    /// the tlb which it was; `None` if no pool holds it.
    #[inline]
    fn with_pool_of<T, R>(
        &self,
        dev: &Device<T>,
        phys: PhysAddr,
        f: impl FnOnce(&Pool<P>) -> R,
    ) -> Option<(R, Held)> {
        if self.first.contains(phys) {
            return Some((f(&self.first), Held::Lasting));
        }
        let (r, transient) = self.grower()?.with_pool_of(dev, phys, f)?;
        Some((
            r,
            if transient {
                Held::Transient
            } else {
                Held::Grown
            },
        ))
    }

    /// Unmaps a raw mapping of `dev` by its device address (as
    /// [`Pool::unmap_raw`]); a transient pool whose mapping this was is
    /// given back. An address in no pool of the tlb is a direct mapping,
    /// nothing to do, if the device reaches it directly and is not forced
    /// to bounce; otherwise it was never this device's, or its transient
    /// pool is gone (a second unmap): [`Error::NotMapped`]. A second unmap
    /// by a device that reaches the freed transient pool's memory directly
    /// cannot be told from the unmap of a direct mapping there, and
    /// returns `Ok` as Linux's does.
    ///
    /// # Errors
    /// As [`Pool::unmap_raw`].
    ///
    /// # Safety
    /// As [`Pool::unmap_raw`].
    #[cfg_attr(feature = "checker", track_caller)]
    pub unsafe fn unmap_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        size: usize,
        dir: Direction,
        attrs: Attrs,
    ) -> Result {
        #[cfg(feature = "checker")]
        let hook = self.hook(dev, core::panic::Location::caller());
        // SAFETY: the mapping's original is still valid (this function's
        // contract).
        #[cfg(feature = "checker")]
        unsafe {
            hook.release(dma, size, Some(dir), Single, 1);
        }
        // SAFETY: this function's contract, passed on.
        let r = unsafe { self.unmap_unchecked(dev, dma, size, dir, attrs) };
        #[cfg(feature = "checker")]
        if r.is_ok() {
            hook.released(dma);
        }
        r
    }

    /// [`IoTlb::unmap_raw`] without the checker's hooks.
    ///
    /// # Safety
    /// As [`Pool::unmap_raw`].
    pub(crate) unsafe fn unmap_unchecked<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        size: usize,
        dir: Direction,
        attrs: Attrs,
    ) -> Result {
        let phys = dev.translate().dma_to_phys(dma);
        // SAFETY: the mapping's original is still valid for writes and
        // unreferenced, and the device is done with it (this function's
        // contract); `phys` is `dma` translated for `dev`.
        let held = unsafe { self.unmap_held(dev, dma, phys, size, dir, attrs, None) };
        held.unwrap_or_else(|| crate::map::outside(dev, dma, phys, size))
    }

    /// [`IoTlb::unmap_raw`] of `dma`, already translated to `phys`, if a
    /// pool of this tlb holds it; `None` (nothing done) if none does. The
    /// pool is looked up once.
    ///
    /// With `into`, the copy back goes through that pointer, which must
    /// have the original's address (`Pool::unmap_at`).
    ///
    /// # Safety
    /// As [`Pool::unmap_raw`], with `phys` the physical address of `dma`
    /// for `dev`; `into`, if given, is valid for writes of `size` bytes
    /// and unreferenced.
    #[expect(clippy::too_many_arguments, reason = "one unmap, already translated")]
    pub(crate) unsafe fn unmap_held<T>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        phys: PhysAddr,
        size: usize,
        dir: Direction,
        attrs: Attrs,
        into: Option<*mut u8>,
    ) -> Option<Result> {
        let ((r, start), held) = self.with_pool_of(dev, phys, |pool| {
            // SAFETY: the mapping's original (and `into`, if given) is
            // still valid for writes and unreferenced, and the device is
            // done with it (this function's contract, `Pool::unmap_raw`'s);
            // `phys` is `dma` translated for this device.
            let r = unsafe { pool.unmap_at(dma, phys, size, dir, attrs, into) };
            (r, pool.start())
        })?;
        if r.is_ok() {
            self.after_release(start, held);
        }
        Some(r)
    }

    /// Copies device writes to the CPU (as [`Pool::sync_for_cpu_raw`]).
    ///
    /// # Errors
    /// As [`Pool::sync_for_cpu_raw`].
    ///
    /// # Safety
    /// As [`Pool::sync_for_cpu_raw`].
    #[cfg_attr(feature = "checker", track_caller)]
    pub unsafe fn sync_for_cpu_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        size: usize,
        dir: Direction,
    ) -> Result {
        #[cfg(feature = "checker")]
        {
            let caller = core::panic::Location::caller();
            // SAFETY: the mapping's original is valid (this function's
            // contract).
            unsafe { self.hook(dev, caller).sync(dma, size, dir, true) };
        }
        // SAFETY: the mapping's original is valid for writes of the synced
        // range and unreferenced (this function's contract).
        unsafe { self.sync_raw(dev, dma, size, SyncTo::Cpu, dir.copies_to_cpu()) }
    }

    /// Copies CPU writes to the device (as [`Pool::sync_for_device_raw`]).
    ///
    /// # Errors
    /// As [`Pool::sync_for_device_raw`].
    ///
    /// # Safety
    /// As [`Pool::sync_for_device_raw`].
    #[cfg_attr(feature = "checker", track_caller)]
    pub unsafe fn sync_for_device_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        size: usize,
        dir: Direction,
    ) -> Result {
        #[cfg(feature = "checker")]
        {
            let caller = core::panic::Location::caller();
            // SAFETY: the mapping's original is valid (this function's
            // contract).
            unsafe { self.hook(dev, caller).sync(dma, size, dir, false) };
        }
        // SAFETY: the mapping's original is valid for reads of the synced
        // range and unreferenced (this function's contract).
        unsafe { self.sync_raw(dev, dma, size, SyncTo::Device, dir.copies_to_device()) }
    }

    /// Both syncs: the pool found once, the address translated once.
    ///
    /// # Safety
    /// As [`Pool::sync_for_cpu_raw`].
    unsafe fn sync_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        size: usize,
        to: SyncTo,
        copy: bool,
    ) -> Result {
        let phys = dev.translate().dma_to_phys(dma);
        // SAFETY: the mapping's original is valid and unreferenced for the
        // synced range (this function's contract); `phys` is `dma`
        // translated for `dev`.
        let held = unsafe { self.sync_held(dev, dma, phys, size, to, copy) };
        held.unwrap_or_else(|| crate::map::outside(dev, dma, phys, size))
    }

    /// A sync of `dma`, already translated to `phys`, if a pool of this
    /// tlb holds it; `None` (nothing done) if none does.
    ///
    /// # Safety
    /// As [`Pool::sync_for_cpu_raw`], with `phys` the physical address of
    /// `dma` for `dev`.
    pub(crate) unsafe fn sync_held<T>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        phys: PhysAddr,
        size: usize,
        to: SyncTo,
        copy: bool,
    ) -> Option<Result> {
        self.with_pool_of(dev, phys, |pool| {
            // SAFETY: the mapping's original is valid and unreferenced for
            // the synced range (this function's contract,
            // `Pool::sync_for_cpu_raw`'s); `phys` is `dma` translated for
            // this device.
            unsafe { pool.sync_at(dma, phys, size, to == SyncTo::Device, copy) }
        })
        .map(|(r, _)| r)
    }

    /// Maps a raw scatter-gather list for `dev`, all or nothing, each
    /// entry as [`IoTlb::map_raw`] maps it.
    ///
    /// # Errors
    /// [`Error::SegmentTooLong`] or the first mapping error; nothing stays
    /// mapped.
    ///
    /// # Safety
    /// As [`Pool::map_sg_raw`].
    #[cfg_attr(feature = "checker", track_caller)]
    pub unsafe fn map_sg_raw<T: Translate + Clone + Send + Sync + 'static>(
        &self,
        dev: &Device<T>,
        sg: &mut [SgEntry],
        dir: Direction,
        attrs: Attrs,
    ) -> Result {
        let r = crate::map::map_sg_by(
            sg,
            dev.max_segment_size(),
            &mut |e| {
                // SAFETY: the entry's `cpu` is valid and unreferenced for
                // `len` bytes until its unmap, and `phys` is its physical
                // address (this function's contract, per entry).
                unsafe { self.map_raw_unchecked(dev, e.phys, e.cpu, e.len, attrs) }
            },
            &mut |done| {
                // SAFETY: `done` was mapped by this call and the device has
                // not been told of it; its original is still valid and
                // unreferenced (this function's contract).
                let undo = unsafe {
                    self.unmap_unchecked(dev, done.dma, done.len, dir, attrs | Attrs::SKIP_CPU_SYNC)
                };
                debug_assert!(undo.is_ok(), "rollback of a fresh mapping failed");
            },
        );
        if let Err(e @ Error::SegmentTooLong { .. }) = &r {
            self.count_failure(e);
        }
        #[cfg(feature = "checker")]
        if r.is_ok() {
            let hook = self.hook(dev, core::panic::Location::caller());
            for e in sg.iter() {
                // SAFETY: each entry's original is valid for reads of its
                // length (this function's contract).
                unsafe { hook.mapped(e.dma, e.cpu, e.len, Some(dir), Sg, sg.len()) };
            }
        }
        r
    }

    /// Unmaps every entry of a list mapped by [`IoTlb::map_sg_raw`]; all
    /// entries are tried and the first error is returned.
    ///
    /// # Errors
    /// As [`IoTlb::unmap_raw`].
    ///
    /// # Safety
    /// As [`Pool::unmap_sg_raw`].
    #[cfg_attr(feature = "checker", track_caller)]
    pub unsafe fn unmap_sg_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        sg: &[SgEntry],
        dir: Direction,
        attrs: Attrs,
    ) -> Result {
        #[cfg(feature = "checker")]
        let hook = self.hook(dev, core::panic::Location::caller());
        crate::map::unmap_sg_by(sg, |e| {
            // SAFETY: this entry's original is still valid (this
            // function's contract, per entry).
            #[cfg(feature = "checker")]
            unsafe {
                hook.release(e.dma, e.len, Some(dir), Sg, sg.len());
            }
            // SAFETY: each entry's original is valid and unreferenced and
            // the device is done with it (this function's contract, per
            // entry).
            let r = unsafe { self.unmap_unchecked(dev, e.dma, e.len, dir, attrs) };
            #[cfg(feature = "checker")]
            if r.is_ok() {
                hook.released(e.dma);
            }
            r
        })
    }

    /// A zeroed coherent allocation for `dev` from the first pool (Linux
    /// `swiotlb_alloc`, which a platform uses only for restricted tlbs).
    ///
    /// # Errors
    /// As [`Pool::alloc_coherent`].
    #[cfg_attr(feature = "checker", track_caller)]
    pub fn alloc_coherent<T: Translate>(&self, dev: &Device<T>, size: usize) -> Result<Coherent> {
        self.first.alloc_coherent(dev, size)
    }

    /// Frees the coherent allocation of `size` bytes at `dma`
    /// ([`Pool::free_coherent`]).
    ///
    /// # Errors
    /// As [`Pool::free_coherent`].
    ///
    /// # Safety
    /// As [`Pool::free_coherent`]: the memory of this coherent allocation
    /// is no longer used through any pointer.
    #[cfg_attr(feature = "checker", track_caller)]
    pub unsafe fn free_coherent<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        size: usize,
    ) -> Result {
        // SAFETY: the memory of the allocation at `dma`, if there is one,
        // is no longer used through any pointer (this function's
        // contract).
        let r = unsafe { self.first.free_coherent(dev, dma, size) };
        if r.is_ok() {
            self.serve_if_queued();
        }
        r
    }
}

/// The misuse checker's view of the tlb (feature `checker`): its raw
/// calls are checked as a pool's are, and the guard bytes of a mapping are
/// in whichever pool holds it (the first, a grown or a transient one).
#[cfg(feature = "checker")]
impl<P: Policy> IoTlb<P> {
    /// Writes (`check == false`) or reads back the guard bytes of the
    /// streaming mapping at bounce address `phys` of `dev`, in the pool of
    /// this tlb holding it, if one does.
    pub(crate) fn guard_op<T>(
        &self,
        dev: &Device<T>,
        phys: PhysAddr,
        check: bool,
    ) -> Option<InPool> {
        self.with_pool_of(dev, phys, |pool| pool.guard_op(phys, check))
            .and_then(|(r, _)| r)
    }

    /// The checker's view of a call on this tlb for `dev`.
    pub(crate) fn hook<'a, T: Translate>(
        &'a self,
        dev: &'a Device<T>,
        caller: Caller,
    ) -> Hook<impl Fn(DmaAddr, bool) -> Option<InPool> + 'a> {
        Hook {
            dev: dev.checker_id(),
            caller,
            guards: move |dma, check| self.guard_op(dev, dev.translate().dma_to_phys(dma), check),
        }
    }
}

/// Which way a sync copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SyncTo {
    Cpu,
    Device,
}
