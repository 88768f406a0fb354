//! A growing tlb: start small, grow through a [`Provider`], serve callers
//! that may not sleep with transient pools, make callers that may sleep
//! wait instead of fail, queue deferred requests, and give idle memory
//! back.
//!
//! Linux 6.6 added dynamic swiotlb (`CONFIG_SWIOTLB_DYNAMIC`, Petr
//! Tesařík's series): a default pool that grows by background work, and
//! transient pools of exactly one mapping for callers that cannot wait.
//! Its pools never shrink, its failures are still failures, a transient
//! pool's memory is decrypted on a path that may not sleep, and finding the
//! pool of an address walks a list. [`DynTlb`] keeps the model and mends
//! those:
//!
//! - **Growth** adds a pool of [`DynConfig::grow_by`] bytes, up to
//!   [`DynConfig::max`] bytes held in all. A caller that may sleep
//!   ([`Attrs::MAY_SLEEP`]) grows the tlb itself; any other caller asks for
//!   a background growth, done by [`DynTlb::maintain`]. Memory comes from
//!   the provider and the platform hooks run on it (share, remap) outside
//!   every lock of this crate, exactly as for a [`ProvidedPool`].
//! - A caller that may not sleep and finds every pool full gets a
//!   **transient pool** of exactly its mapping, if the provider can give
//!   memory without sleeping ([`Provider::alloc_nowait`]) and the hooks can
//!   run without sleeping ([`MemoryHooks::nowait`]). The pool is tracked on
//!   its device ([`Device`]) and given back when its mapping is
//!   unmapped.
//! - A caller that may sleep and cannot grow (limit reached, provider out
//!   of memory, another caller growing) **waits** in FIFO order for freed
//!   slots or for the growth, bounded by [`DynConfig::wait_timeout`]
//!   (`std` only: waiting needs a scheduler).
//! - A **deferred** request ([`DynTlb::bounce_deferred_raw`] with a
//!   callback, [`DynTlb::map_async`] as a future) joins the same FIFO queue
//!   and completes once slots free up, as FreeBSD's `bus_dmamap_load` with
//!   `BUS_DMA_WAITOK` and Windows' map registers do. Each request completes
//!   exactly once or is cancelled; never both, never neither.
//! - **Shrinking**: [`DynTlb::maintain`] gives back a grown pool that has
//!   been completely free and untouched for [`DynConfig::idle`]: at most
//!   one pool per idle time, and none while the tlb grew within it, so a
//!   steady workload does not thrash. The first pool is never given back,
//!   and no pool is given back while one mapping lives in it. Call
//!   `maintain` from a worker where sleeping is allowed, or, under `std`,
//!   let `DynTlb::spawn_maintainer` run it (woken at once when a caller
//!   asks for growth).
//! - Finding the pool of an address takes the same few loads however many
//!   pools there are: a hash of the address's granule (a power of two no
//!   larger than the smallest pool) names the at most two pools over it
//!   (`granules.rs`), with a binary search over the pools sorted by
//!   address when their sizes differ too much for a small table.
//!   Transient pools are looked up only for devices that ever had one, in
//!   their own list, by binary search.
//!
//! Lock order: the deferral queue, then the pool set, then a pool's area
//! locks. Platform hooks and the provider are never called under any of
//! them, and deferral callbacks and wakeups run after every lock is
//! dropped.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::future::Future;
use core::pin::Pin;
use core::ptr::NonNull;
use core::task::{Context, Poll, Waker};

use crate::addr::{DmaAddr, PhysAddr};
use crate::attrs::Attrs;
use crate::device::{Device, Tracked};
use crate::direction::Direction;
use crate::error::{ConfigProblem, Error, Result};
use crate::granules::Granules;
use crate::map::{AfterRelease, DmaBuffer, Held, MapFailed, MapOptions, Mapping, RawBuffer};
use crate::pool::{Bounce, Fast, Policy, Pool, PoolConfig};
use crate::provider::{
    self, MemoryHooks, NoHooks, ProvidedPool, Provider, ProviderError, XEN_DMA_BITS,
};
use crate::stats::Stats;
use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, Mutex, Ordering, RwLock};
use crate::translate::Translate;

/// A monotonic time source, in nanoseconds, for idle times and deferral
/// times. Kernels pass their clock; tests pass a [`ManualClock`].
pub trait Clock: Send + Sync {
    /// Nanoseconds since an arbitrary fixed origin; never decreases.
    fn now_ns(&self) -> u64;
}

/// A clock that moves only when told to, for tests and simulations.
#[derive(Debug, Default)]
pub struct ManualClock(core::sync::atomic::AtomicU64);

impl ManualClock {
    /// A clock at zero.
    pub const fn new() -> Self {
        Self(core::sync::atomic::AtomicU64::new(0))
    }

    /// Moves the clock `ns` nanoseconds forward.
    pub fn advance(&self, ns: u64) {
        self.0.fetch_add(ns, core::sync::atomic::Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.0.load(core::sync::atomic::Ordering::Relaxed)
    }
}

/// The standard library's monotonic clock.
#[cfg(feature = "std")]
#[derive(Debug)]
pub struct StdClock(std::time::Instant);

#[cfg(feature = "std")]
impl Default for StdClock {
    fn default() -> Self {
        Self(std::time::Instant::now())
    }
}

#[cfg(feature = "std")]
impl Clock for StdClock {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_ns(&self) -> u64 {
        (**self).now_ns()
    }
}

/// How a growing tlb sizes itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DynConfig {
    /// Bytes of the first pool, built at once and never given back.
    pub start: usize,
    /// Bytes of each pool added by growth. At least one segment (the
    /// largest mapping), so that any mapping fits a fresh pool.
    pub grow_by: usize,
    /// The most bytes held at once: pools and transient pools together.
    pub max: usize,
    /// Exclusive physical limit for pool memory (4 GiB for a tlb serving
    /// 32-bit devices).
    pub below: PhysAddr,
    /// Geometry of every pool (a transient pool uses its slot size and
    /// page size, with one area).
    pub pool: PoolConfig,
    /// DMA widths tried by the remap hook ([`provider::pool_from_provider`]).
    pub dma_bits: (u32, u32),
    /// How long a grown pool must stay completely free and untouched
    /// before [`DynTlb::maintain`] gives it back, in nanoseconds; also the
    /// quiet time after a growth before any pool is given back.
    pub idle: u64,
    /// How long a caller that may sleep waits for slots before it fails
    /// with [`Error::TimedOut`], in nanoseconds.
    pub wait_timeout: u64,
}

impl DynConfig {
    /// Start at `start` bytes and grow up to `max`, in 4 MiB steps (or
    /// `start`, if larger), with Linux's pool geometry, no address limit,
    /// a one-second idle time and a one-second wait.
    pub fn new(start: usize, max: usize) -> Self {
        Self {
            start,
            grow_by: start.max(4 << 20),
            max,
            below: PhysAddr(u64::MAX),
            pool: PoolConfig::default(),
            dma_bits: XEN_DMA_BITS,
            idle: 1_000_000_000,
            wait_timeout: 1_000_000_000,
        }
    }

    /// Bytes of the largest mapping a pool of this geometry holds.
    fn segment_bytes(&self) -> usize {
        (self.pool.segment as usize) << self.pool.slot_shift
    }
}

/// What a pool of the tlb is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The first pool: never given back.
    First,
    /// Added by growth: given back when idle.
    Grown,
    /// Made for one mapping of a caller that could not sleep.
    Transient,
}

/// When a grown pool was last seen busy.
#[derive(Clone, Copy, Debug, Default)]
struct Idle {
    /// Bytes copied into the pool, at the last look (activity measure).
    activity: u64,
    /// When the pool was last seen holding slots or active.
    since: u64,
}

/// One pool of the tlb.
struct Member<V: Provider, H: MemoryHooks, P: Policy> {
    pool: ProvidedPool<Arc<V>, Arc<H>, P>,
    kind: Kind,
    /// Bytes the member counts against [`DynConfig::max`].
    bytes: usize,
    idle: Mutex<Idle>,
    /// The device a transient pool belongs to.
    owner: Option<Arc<Tracked>>,
}

impl<V: Provider, H: MemoryHooks, P: Policy> Member<V, H, P> {
    fn start(&self) -> u64 {
        self.pool.start().0
    }
}

/// Counters of a growing tlb, beside its pools' [`Stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DynStats {
    /// Pools now, the first and grown ones (transient ones not counted).
    pub pools: u64,
    /// Pools added by growth since creation.
    pub pools_added: u64,
    /// Grown pools given back since creation.
    pub pools_removed: u64,
    /// Growths that failed (provider out of memory, a hook failed).
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
    /// [`DynTlb::bounce_deferred_raw`]).
    pub callback_panics: u64,
    /// The pools' own counters, summed (transient pools included; the
    /// high-water mark is the sum of the pools' marks, an upper bound of
    /// the tlb's).
    pub pool: Stats,
}

/// How one queued request ends.
enum Sink {
    /// Call this with the outcome.
    Callback(Box<dyn FnOnce(Result<Bounce>) + Send>),
    /// Store the outcome in the ticket and wake its waiter.
    Store,
}

/// The shared part of a queued request.
struct TicketInner {
    id: u64,
    queued_at: u64,
    state: Mutex<TicketState>,
}

struct TicketState {
    phase: Phase,
    outcome: Option<Result<Bounce>>,
    waker: Option<Waker>,
    #[cfg(feature = "std")]
    thread: Option<std::thread::Thread>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Queued,
    Completed,
    Cancelled,
}

/// How a queued request tries one pool: the bounce of the original
/// request, made later, possibly on another thread.
type Attempt<P> = Box<dyn FnMut(&Pool<P>) -> Result<Bounce> + Send>;

/// A bounce and the pool holding it.
type Found<P> = (Bounce, NonNull<Pool<P>>);

/// A queued request: how to try it, and whom to tell.
struct Entry<P: Policy> {
    ticket: Arc<TicketInner>,
    attempt: Attempt<P>,
    /// The original, copied into the slots once they are allocated.
    src: SendPtr,
    size: usize,
    sink: Sink,
}

/// A deferred request in the queue, to cancel it with
/// [`DynTlb::cancel`].
#[derive(Clone)]
pub struct Ticket(Arc<TicketInner>);

impl Ticket {
    /// The request's number: tickets are numbered in queue order.
    pub fn id(&self) -> u64 {
        self.0.id
    }
}

impl core::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("Ticket").field(&self.0.id).finish()
    }
}

/// What [`DynTlb::bounce_deferred_raw`] did.
#[derive(Debug)]
pub enum Deferral {
    /// Mapped at once; the callback was dropped uncalled.
    Now(Bounce),
    /// Queued: the callback runs once, when slots free up, unless the
    /// ticket is cancelled first.
    Queued(Ticket),
}

/// Where a bounce was placed.
struct Placed<P: Policy> {
    bounce: Bounce,
    pool: NonNull<Pool<P>>,
    transient: bool,
}

/// How a growth attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Grow {
    Grew,
    /// Another caller is growing; its growth serves the queue.
    Busy,
    /// Growing would pass [`DynConfig::max`].
    Limit,
    /// The provider or a hook failed.
    Failed(ProviderError),
}

/// Runs a deferral callback; whether it panicked. Under `std` a panic is
/// caught so that it never unwinds into whoever served the queue; without
/// `std` there is no unwinding to catch (a `no_std` panic handler does not
/// return), so it reports `false`.
fn run_callback(f: Box<dyn FnOnce(Result<Bounce>) + Send>, r: Result<Bounce>) -> bool {
    #[cfg(feature = "std")]
    {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || f(r))).is_err()
    }
    #[cfg(not(feature = "std"))]
    {
        f(r);
        false
    }
}

/// A raw pointer that may be sent with a queued request: the raw API's
/// caller keeps it valid until the request completes or is cancelled.
#[derive(Clone, Copy)]
struct SendPtr(*mut u8);

// SAFETY: the pointer is only dereferenced by the bounce copy of the
// request it belongs to, under the raw API's contract that the memory
// stays valid and unaliased until the request completes or is cancelled;
// which thread makes that copy does not matter.
unsafe impl Send for SendPtr {}

/// A growing tlb (see the [module documentation](self)).
pub struct DynTlb<V: Provider, H: MemoryHooks = NoHooks, P: Policy = Fast> {
    provider: Arc<V>,
    hooks: Arc<H>,
    clock: Arc<dyn Clock>,
    config: DynConfig,
    /// The first pool, where direct mappings are counted.
    first: Arc<Member<V, H, P>>,
    /// Every pool but the transient ones, sorted by address.
    pools: RwLock<Set<V, H, P>>,
    /// Transient pools, sorted by address.
    transients: Mutex<Set<V, H, P>>,
    queue: Mutex<VecDeque<Entry<P>>>,
    /// Length of `queue`, read without its lock on every unmap.
    queued: AtomicUsize,
    next_ticket: AtomicU64,
    held: AtomicUsize,
    peak_held: AtomicUsize,
    growing: AtomicBool,
    grow_wanted: AtomicBool,
    last_grow: AtomicU64,
    last_shrink: AtomicU64,
    /// Where the last successful search ended, to start the next there.
    hint: AtomicUsize,
    counters: Counters,
    /// The thread of a [`Maintainer`], woken when growth is asked for.
    #[cfg(all(feature = "std", not(swiotlb_loom)))]
    maintainer: Mutex<Option<std::thread::Thread>>,
}

#[derive(Default)]
struct Counters {
    pools_added: AtomicU64,
    pools_removed: AtomicU64,
    grow_failures: AtomicU64,
    transient_made: AtomicU64,
    deferred: AtomicU64,
    deferred_ns: AtomicU64,
    max_wait_ns: AtomicU64,
    timeouts: AtomicU64,
    cancelled: AtomicU64,
    callback_panics: AtomicU64,
    /// Failures counted by the tlb itself (a full tlb is not one pool's
    /// failure).
    failures: [AtomicU64; crate::error::FailReason::COUNT],
}

impl<V: Provider, H: MemoryHooks, P: Policy> core::fmt::Debug for DynTlb<V, H, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DynTlb")
            .field("config", &self.config)
            .field("pools", &self.pools.read().len())
            .field("bytes_held", &self.held.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn is_full(e: &Error) -> bool {
    matches!(e, Error::PoolFull { .. })
}

impl<V: Provider, H: MemoryHooks> DynTlb<V, H> {
    /// A growing tlb of [`Fast`] pools: builds the first pool of
    /// `config.start` bytes from `provider`, prepared by `hooks`. For
    /// another policy use [`DynTlb::with_policy`].
    ///
    /// May sleep (the first pool is built here).
    ///
    /// # Errors
    /// As [`DynTlb::with_policy`].
    pub fn new(
        provider: V,
        hooks: H,
        clock: Arc<dyn Clock>,
        config: DynConfig,
    ) -> core::result::Result<Self, ProviderError> {
        Self::with_policy(provider, hooks, clock, config)
    }
}

impl<V: Provider, H: MemoryHooks, P: Policy> DynTlb<V, H, P> {
    /// Builds the first pool of `config.start` bytes from `provider`,
    /// prepared by `hooks`, and a tlb that grows from it.
    ///
    /// May sleep (the first pool is built here).
    ///
    /// # Errors
    /// [`ProviderError::Pool`] with [`Error::BadConfig`] if `start` or
    /// `grow_by` is smaller than one segment, or `max` smaller than
    /// `start`; otherwise as [`provider::pool_from_provider`].
    pub fn with_policy(
        provider: V,
        hooks: H,
        clock: Arc<dyn Clock>,
        config: DynConfig,
    ) -> core::result::Result<Self, ProviderError> {
        let segment = config.segment_bytes();
        let problem = if config.start < segment {
            Some(ConfigProblem::StartBelowSegment {
                start: config.start,
                segment,
            })
        } else if config.grow_by < segment {
            Some(ConfigProblem::GrowBelowSegment {
                grow_by: config.grow_by,
                segment,
            })
        } else if config.max < config.start {
            Some(ConfigProblem::MaxBelowStart {
                start: config.start,
                max: config.max,
            })
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(ProviderError::Pool(Error::BadConfig { problem }));
        }
        let provider = Arc::new(provider);
        let hooks = Arc::new(hooks);
        let pool = provider::build(
            provider.clone(),
            hooks.clone(),
            config.start,
            config.below,
            config.pool,
            config.dma_bits,
            false,
        )?;
        let now = clock.now_ns();
        let first = Arc::new(Member {
            pool,
            kind: Kind::First,
            bytes: config.start,
            idle: Mutex::new(Idle::default()),
            owner: None,
        });
        Ok(Self {
            provider,
            hooks,
            clock,
            config,
            pools: RwLock::new(Set::one(first.clone())),
            first,
            transients: Mutex::new(Set::default()),
            queue: Mutex::new(VecDeque::new()),
            queued: AtomicUsize::new(0),
            next_ticket: AtomicU64::new(0),
            held: AtomicUsize::new(config.start),
            peak_held: AtomicUsize::new(config.start),
            growing: AtomicBool::new(false),
            grow_wanted: AtomicBool::new(false),
            last_grow: AtomicU64::new(now),
            last_shrink: AtomicU64::new(now),
            hint: AtomicUsize::new(0),
            counters: Counters::default(),
            #[cfg(all(feature = "std", not(swiotlb_loom)))]
            maintainer: Mutex::new(None),
        })
    }

    /// Adds one pool of [`DynConfig::grow_by`] bytes now, as a growth
    /// would (to grow ahead of a known burst, or from a kernel's own
    /// worker). Returns `false` if the limit is reached or another caller
    /// is growing. May sleep.
    ///
    /// # Errors
    /// The provider's or a hook's error.
    pub fn add_pool(&self) -> core::result::Result<bool, ProviderError> {
        match self.grow() {
            Grow::Grew => Ok(true),
            Grow::Busy | Grow::Limit => Ok(false),
            Grow::Failed(e) => Err(e),
        }
    }

    /// The index, in address order, of the pool (first or grown) holding
    /// `phys`: the lookup every unmap and sync makes. For the
    /// lookup benchmark.
    #[doc(hidden)]
    pub fn pool_index_of(&self, phys: PhysAddr) -> Option<usize> {
        self.pools.read().index_of(phys)
    }

    /// The configuration.
    pub fn config(&self) -> &DynConfig {
        &self.config
    }

    /// Bytes held now, transient pools included.
    pub fn bytes_held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Pools now (the first and grown ones).
    pub fn pool_count(&self) -> usize {
        self.pools.read().len()
    }

    /// The start addresses of the pools (the first and grown ones), in
    /// address order.
    pub fn pool_starts(&self) -> Vec<PhysAddr> {
        self.pools.read().iter().map(|m| m.pool.start()).collect()
    }

    /// The counters and the pools' summed statistics.
    pub fn stats(&self) -> DynStats {
        let mut pool = Stats::default();
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
        };
        let npools = {
            let pools = self.pools.read();
            for m in pools.iter() {
                add(m.pool.stats());
            }
            pools.len()
        };
        let (ntrans, transient_nslabs) = {
            let t = self.transients.lock();
            for m in t.iter() {
                add(m.pool.stats());
            }
            let nslabs = t.iter().map(|m| u64::from(m.pool.nslabs())).sum();
            (t.len(), nslabs)
        };
        // A sum of marks is a bound, not the tlb's mark.
        pool.hiwater_exact = false;
        for (a, b) in pool.failures.iter_mut().zip(&self.counters.failures) {
            *a += b.load(Ordering::Relaxed);
        }
        let c = &self.counters;
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DynStats {
            pools: npools as u64,
            pools_added: ld(&c.pools_added),
            pools_removed: ld(&c.pools_removed),
            grow_failures: ld(&c.grow_failures),
            transient_pools: ntrans as u64,
            io_tlb_transient_nslabs: transient_nslabs,
            transient_made: ld(&c.transient_made),
            bytes_held: self.held.load(Ordering::Relaxed) as u64,
            peak_bytes_held: self.peak_held.load(Ordering::Relaxed) as u64,
            deferred: ld(&c.deferred),
            deferred_ns: ld(&c.deferred_ns),
            max_wait_ns: ld(&c.max_wait_ns),
            waiters: self.queued.load(Ordering::Relaxed) as u64,
            timeouts: ld(&c.timeouts),
            cancelled: ld(&c.cancelled),
            callback_panics: ld(&c.callback_panics),
            pool,
        }
    }

    fn count_failure(&self, e: &Error) {
        self.counters.failures[e.reason() as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Reserves `len` bytes under the limit.
    fn reserve(&self, len: usize) -> bool {
        let mut cur = self.held.load(Ordering::Relaxed);
        loop {
            let Some(next) = cur.checked_add(len).filter(|&n| n <= self.config.max) else {
                return false;
            };
            match self
                .held
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.peak_held.fetch_max(next, Ordering::Relaxed);
                    return true;
                }
                Err(c) => cur = c,
            }
        }
    }

    fn unreserve(&self, len: usize) {
        self.held.fetch_sub(len, Ordering::Relaxed);
    }

    /// Tries `attempt` on every pool, starting where the last success was.
    /// Returns the first success, the first error that is not "full", or
    /// the last "full" error. Runs under the pool set's read lock, so no
    /// pool is removed while an allocation in it is being made.
    fn try_pools(
        &self,
        attempt: &mut dyn FnMut(&Pool<P>) -> Result<Bounce>,
    ) -> Result<(Bounce, NonNull<Pool<P>>)> {
        let pools = self.pools.read();
        let n = pools.len();
        let first = self.hint.load(Ordering::Relaxed) % n;
        let mut last = Error::PoolFull {
            requested: 0,
            free: 0,
            largest_run: 0,
        };
        for k in 0..n {
            let i = (first + k) % n;
            let pool: &Pool<P> = &pools[i].pool;
            match attempt(pool) {
                Ok(b) => {
                    if i != first {
                        self.hint.store(i, Ordering::Relaxed);
                    }
                    return Ok((b, NonNull::from(pool)));
                }
                Err(e) if is_full(&e) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// [`DynTlb::try_pools`] with an allocation-only `attempt` for `size`
    /// bytes of `src`, then the copy into the slots, after the pool-set
    /// lock is dropped (a copy of 256 KiB must not hold up a growth).
    ///
    /// # Safety
    /// `src` is valid for reads of `size` bytes and unaliased, as for
    /// [`Pool::bounce_raw`], and `attempt` allocates for `src`/`size`.
    unsafe fn try_pools_copy(
        &self,
        attempt: &mut dyn FnMut(&Pool<P>) -> Result<Bounce>,
        src: *mut u8,
        size: usize,
    ) -> Result<(Bounce, NonNull<Pool<P>>)> {
        let (b, pool) = self.try_pools(attempt)?;
        // SAFETY: `pool` holds `b`'s slots, just allocated, so it stays
        // valid (no pool holding a live allocation is released).
        let p = unsafe { pool.as_ref() };
        // SAFETY:
        // - `b` is a live allocation of `p`, just made for `src`/`size`
        //   (`attempt` allocates for them: this function's contract);
        // - `src` is valid for reads of `size` bytes and unaliased (this
        //   function's contract).
        unsafe { p.copy_in(&b, src, size) };
        Ok((b, pool))
    }

    /// Adds one grown pool, unless another caller is growing or the limit
    /// is reached. May sleep; holds no lock while the provider and hooks
    /// run.
    fn grow(&self) -> Grow {
        if self.growing.swap(true, Ordering::Acquire) {
            return Grow::Busy;
        }
        let len = self.config.grow_by;
        let r = if !self.reserve(len) {
            Grow::Limit
        } else {
            match provider::build(
                self.provider.clone(),
                self.hooks.clone(),
                len,
                self.config.below,
                self.config.pool,
                self.config.dma_bits,
                false,
            ) {
                Ok(pool) => {
                    let now = self.clock.now_ns();
                    let m = Arc::new(Member {
                        pool,
                        kind: Kind::Grown,
                        bytes: len,
                        idle: Mutex::new(Idle {
                            activity: 0,
                            since: now,
                        }),
                        owner: None,
                    });
                    self.insert(m);
                    self.last_grow.store(now, Ordering::Relaxed);
                    self.counters.pools_added.fetch_add(1, Ordering::Relaxed);
                    Grow::Grew
                }
                Err(e) => {
                    self.unreserve(len);
                    self.counters.grow_failures.fetch_add(1, Ordering::Relaxed);
                    Grow::Failed(e)
                }
            }
        };
        self.growing.store(false, Ordering::Release);
        if r == Grow::Grew {
            self.service();
        }
        r
    }

    /// Adds grown pool `m` to the set. The new index is built between a
    /// read and the write lock, so lookups wait only for the swap.
    fn insert(&self, m: Arc<Member<V, H, P>>) {
        let draft = self.pools.read().draft_insert(&m);
        // No lock held here.
        let draft = draft.build_index();
        let old = self.pools.write().insert_drafted(m, draft);
        // Freed with no lock held.
        drop(old);
    }

    /// Asks [`DynTlb::maintain`] to grow the tlb.
    fn want_growth(&self) {
        if !self.grow_wanted.swap(true, Ordering::Relaxed) {
            // Waking a thread does not sleep.
            #[cfg(all(feature = "std", not(swiotlb_loom)))]
            if let Some(t) = self.maintainer.lock().as_ref() {
                t.unpark();
            }
        }
    }

    /// Makes a transient pool for one mapping of `size` bytes for `dev`
    /// and bounces into it. `None` if the provider or hooks would sleep,
    /// the limit is reached, or the mapping does not fit.
    ///
    /// # Safety
    /// As [`Pool::bounce_raw`].
    unsafe fn bounce_transient<T: Translate>(
        &self,
        dev: &Device<T>,
        orig: PhysAddr,
        cpu: *mut u8,
        size: usize,
        opts: MapOptions,
    ) -> Option<Placed<P>> {
        let slot_shift = self.config.pool.slot_shift;
        let slot = 1usize << slot_shift;
        let page = 1usize << self.config.pool.page_shift;
        // Room for the mapping and any padding its alignment may need.
        let slack = (dev.min_align_mask() as usize | opts.alloc_align_mask as usize)
            .max(if size >= page { page - 1 } else { 0 });
        let len = size.checked_add(slack)?.checked_next_multiple_of(slot)?;
        let nslabs = (len >> slot_shift) as u32;
        let config = PoolConfig {
            segment: nslabs.checked_next_power_of_two()?,
            nareas: 1,
            ..self.config.pool
        };
        if !self.reserve(len) {
            return None;
        }
        let built = provider::build::<P, _, _>(
            self.provider.clone(),
            self.hooks.clone(),
            len,
            self.config.below,
            config,
            self.config.dma_bits,
            true,
        );
        let pool = match built {
            Ok(p) => p,
            Err(_) => {
                self.unreserve(len);
                return None;
            }
        };
        // SAFETY: the caller's obligations, passed on.
        let r = unsafe { pool.bounce_inner(dev, orig, cpu, size, opts) };
        let Ok(bounce) = r else {
            // Nothing lives in it: give it back at once (no sleeping: the
            // memory came from `alloc_nowait` and the hooks are `nowait`).
            drop(pool);
            self.unreserve(len);
            return None;
        };
        let m = Arc::new(Member {
            pool,
            kind: Kind::Transient,
            bytes: len,
            idle: Mutex::new(Idle::default()),
            owner: Some(dev.tracking().get().clone()),
        });
        let ptr = NonNull::from(&*m.pool as &Pool<P>);
        let range = (m.start(), m.start() + m.pool.len() as u64);
        let tracked = dev.tracking().get();
        tracked.ranges.lock().push(range);
        tracked.used.store(true, Ordering::Release);
        {
            self.transients.lock().insert(m);
        }
        self.counters.transient_made.fetch_add(1, Ordering::Relaxed);
        Some(Placed {
            bounce,
            pool: ptr,
            transient: true,
        })
    }

    /// Removes the transient pool starting at `start` once its mapping is
    /// gone, and gives its memory back.
    fn drop_transient(&self, start: PhysAddr) {
        let m = {
            let mut t = self.transients.lock();
            let at = t.starts.partition_point(|&p| p < start.0);
            match t.members.get(at) {
                Some(m) if m.start() == start.0 && m.pool.used_slots() == 0 => t.remove(at),
                _ => return,
            }
        };
        if let Some(owner) = &m.owner {
            owner.ranges.lock().retain(|r| r.0 != start.0);
        }
        let bytes = m.bytes;
        // The last reference: dropping it undoes the hooks and frees the
        // memory (allowed without sleeping: see `bounce_transient`).
        drop(m);
        self.unreserve(bytes);
    }

    /// Bounces for `dev` wherever there is room: the pools, then growth
    /// (callers that may sleep) or a transient pool (callers that may
    /// not), then waiting (callers that may sleep, `std`).
    ///
    /// # Safety
    /// As [`Pool::bounce_raw`].
    #[cfg_attr(feature = "std", allow(unused_assignments))]
    unsafe fn place<T: Translate + Clone + Send + Sync + 'static>(
        &self,
        dev: &Device<T>,
        orig: PhysAddr,
        cpu: *mut u8,
        size: usize,
        attrs: Attrs,
        opts: MapOptions,
    ) -> Result<Placed<P>> {
        let device = dev;
        let mut attempt = |pool: &Pool<P>| pool.bounce_alloc(device, orig, cpu, size, opts);
        let sleeps = attrs.contains(Attrs::MAY_SLEEP);
        // Callers that may sleep queue behind earlier waiters (FIFO);
        // others cannot wait, so they try at once.
        let behind = sleeps && self.queued.load(Ordering::Acquire) > 0;
        let mut full = match behind {
            true => None,
            // SAFETY: the caller's obligations, passed on.
            false => match unsafe { self.try_pools_copy(&mut attempt, cpu, size) } {
                Ok((bounce, pool)) => {
                    return Ok(Placed {
                        bounce,
                        pool,
                        transient: false,
                    })
                }
                Err(e) if is_full(&e) => Some(e),
                Err(e) => {
                    self.count_failure(&e);
                    return Err(e);
                }
            },
        };
        if sleeps {
            // Grow while growth helps. Each growth serves the queue first
            // (`grow` calls `service`), so a caller behind earlier waiters
            // takes room only once they have theirs: it grows for them
            // and then joins the queue.
            let mut behind = behind;
            while self.grow() == Grow::Grew {
                if behind {
                    behind = self.queued.load(Ordering::Acquire) > 0;
                    if behind {
                        continue;
                    }
                }
                // SAFETY: the caller's obligations, passed on.
                match unsafe { self.try_pools_copy(&mut attempt, cpu, size) } {
                    Ok((bounce, pool)) => {
                        return Ok(Placed {
                            bounce,
                            pool,
                            transient: false,
                        })
                    }
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
                // SAFETY: the caller's obligations, passed on: this caller
                // waits until the request completes or is cancelled, so
                // `cpu` stays valid meanwhile.
                return unsafe { self.wait(attempt, cpu, size) }.map(|(bounce, pool)| Placed {
                    bounce,
                    pool,
                    transient: false,
                });
            }
        } else {
            self.want_growth();
            // SAFETY: the caller's obligations, passed on.
            if let Some(p) = unsafe { self.bounce_transient(dev, orig, cpu, size, opts) } {
                return Ok(p);
            }
        }
        #[allow(unreachable_code)]
        {
            let e = full.unwrap_or(Error::PoolFull {
                requested: 0,
                free: 0,
                largest_run: 0,
            });
            self.count_failure(&e);
            Err(e)
        }
    }

    /// Queues `attempt` (the allocation of a bounce of `size` bytes from
    /// `src`) and returns its ticket; the request may complete before
    /// this returns.
    ///
    /// # Safety
    /// `src` is valid for reads of `size` bytes and unaliased until the
    /// request completes or is cancelled.
    unsafe fn enqueue(
        &self,
        attempt: Attempt<P>,
        src: SendPtr,
        size: usize,
        sink: Sink,
        waker: Option<Waker>,
    ) -> Arc<TicketInner> {
        let ticket = Arc::new(TicketInner {
            id: self.next_ticket.fetch_add(1, Ordering::Relaxed),
            queued_at: self.clock.now_ns(),
            state: Mutex::new(TicketState {
                phase: Phase::Queued,
                outcome: None,
                waker,
                #[cfg(feature = "std")]
                thread: None,
            }),
        });
        self.counters.deferred.fetch_add(1, Ordering::Relaxed);
        {
            let mut q = self.queue.lock();
            q.push_back(Entry {
                ticket: ticket.clone(),
                attempt,
                src,
                size,
                sink,
            });
            self.queued.store(q.len(), Ordering::SeqCst);
        }
        // Slots freed between the caller's failed try and the store above
        // saw an empty queue and woke nobody: try again now.
        self.service();
        ticket
    }

    /// Completes queued requests in order while the head fits. Called
    /// after every unmap while the queue is not empty, after every growth,
    /// and after every enqueue.
    fn service(&self) {
        // One request at a time: slots are granted in queue order under
        // the queue lock, and each outcome is delivered with no lock held,
        // before the next is popped, so a callback that panics leaves the
        // rest queued rather than holding slots nobody will be told of.
        loop {
            let (entry, r) = {
                let mut q = self.queue.lock();
                let Some(head) = q.front_mut() else { return };
                let r = match self.try_pools(&mut *head.attempt) {
                    Ok(found) => Ok(found),
                    Err(e) if is_full(&e) => return,
                    Err(e) => Err(e),
                };
                let Some(entry) = q.pop_front() else { return };
                self.queued.store(q.len(), Ordering::SeqCst);
                (entry, r)
            };
            let waited = self.clock.now_ns().saturating_sub(entry.ticket.queued_at);
            self.counters
                .deferred_ns
                .fetch_add(waited, Ordering::Relaxed);
            self.counters
                .max_wait_ns
                .fetch_max(waited, Ordering::Relaxed);
            let r = r.map(|(b, pool): Found<P>| {
                // SAFETY: `pool` holds `b`'s slots, just allocated for this
                // entry, so it stays valid (no pool holding a live
                // allocation is released).
                let p = unsafe { pool.as_ref() };
                // SAFETY:
                // - `b` is a live allocation of `p`, made by the entry's
                //   attempt for `entry.src`/`entry.size`;
                // - the entry's enqueuer keeps `src` valid for `size` bytes
                //   and unaliased until the request completes (`enqueue`'s
                //   contract), which is below.
                unsafe { p.copy_in(&b, entry.src.0, entry.size) };
                b
            });
            self.complete(entry, r);
        }
    }

    /// Tells a popped request its outcome. No lock of the tlb is held.
    fn complete(&self, entry: Entry<P>, r: Result<Bounce>) {
        let Entry { ticket, sink, .. } = entry;
        match sink {
            Sink::Callback(f) => {
                ticket.state.lock().phase = Phase::Completed;
                let granted = r.as_ref().ok().copied();
                if !run_callback(f, r) {
                    return;
                }
                // The callback panicked: the default panic hook has
                // reported it, and it stops here rather than in the
                // unrelated caller whose unmap or growth served the queue.
                self.counters
                    .callback_panics
                    .fetch_add(1, Ordering::Relaxed);
                // Its slots would be lost with it: give them back (no
                // copy-back: the original may be gone with the panic).
                if let Some(b) = granted {
                    let pools = self.pools.read();
                    if let Some(m) = find(&pools, b.phys) {
                        let pool: &Pool<P> = &m.pool;
                        let _ = pool.release(b.start, b.nslots, b.dma, 0, 0);
                    }
                }
            }
            Sink::Store => {
                let mut st = ticket.state.lock();
                st.phase = Phase::Completed;
                st.outcome = Some(r);
                let waker = st.waker.take();
                #[cfg(feature = "std")]
                let thread = st.thread.take();
                drop(st);
                if let Some(w) = waker {
                    w.wake();
                }
                #[cfg(feature = "std")]
                if let Some(t) = thread {
                    t.unpark();
                }
            }
        }
    }

    /// Cancels a queued request. Returns `true` if it was still queued: it
    /// will never complete and its callback is dropped uncalled. `false`
    /// if it completed or is completing (its callback runs, or ran, once).
    pub fn cancel(&self, ticket: &Ticket) -> bool {
        let cancelled = self.cancel_inner(&ticket.0);
        if cancelled {
            self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        cancelled
    }

    fn cancel_inner(&self, ticket: &Arc<TicketInner>) -> bool {
        let entry = {
            let mut q = self.queue.lock();
            let Some(at) = q.iter().position(|e| Arc::ptr_eq(&e.ticket, ticket)) else {
                return false;
            };
            let e = q.remove(at);
            self.queued.store(q.len(), Ordering::SeqCst);
            e
        };
        ticket.state.lock().phase = Phase::Cancelled;
        // The callback (and what it owns) is dropped outside the lock.
        drop(entry);
        // A cancelled head may have been what held the queue back.
        if self.queued.load(Ordering::Acquire) > 0 {
            self.service();
        }
        true
    }

    /// Waits in the queue for `attempt` to succeed, up to the timeout.
    #[cfg(all(feature = "std", not(swiotlb_loom)))]
    ///
    /// # Safety
    /// As [`DynTlb::enqueue`].
    unsafe fn wait(
        &self,
        attempt: Attempt<P>,
        src: SendPtr,
        size: usize,
    ) -> Result<(Bounce, NonNull<Pool<P>>)> {
        let began = std::time::Instant::now();
        let timeout = std::time::Duration::from_nanos(self.config.wait_timeout);
        // SAFETY: the caller's obligations, passed on.
        let ticket = unsafe { self.enqueue(attempt, src, size, Sink::Store, None) };
        // Set after queuing: an outcome that came before it is seen by the
        // check at the top of the loop, one after it unparks this thread.
        ticket.state.lock().thread = Some(std::thread::current());
        let mut may_grow = true;
        loop {
            {
                let mut st = ticket.state.lock();
                if st.phase == Phase::Completed {
                    let r = st.outcome.take().unwrap_or(Err(Error::NoPool));
                    drop(st);
                    return r.and_then(|b| self.pool_of(b.phys).map(|p| (b, p)));
                }
            }
            let waited = began.elapsed();
            if waited >= timeout {
                if self.cancel_inner(&ticket) {
                    self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                    let e = Error::TimedOut {
                        waited_us: u64::try_from(waited.as_micros()).unwrap_or(u64::MAX),
                    };
                    self.count_failure(&e);
                    return Err(e);
                }
                // Completing right now: the outcome is on its way.
                std::thread::yield_now();
                continue;
            }
            // Wake at least every millisecond: if the room this request
            // was waiting for went to others while it joined the queue,
            // nobody else may grow for it, so it grows itself, while
            // growing can help.
            std::thread::park_timeout((timeout - waited).min(std::time::Duration::from_millis(1)));
            if may_grow && ticket.state.lock().phase == Phase::Queued {
                may_grow = matches!(self.grow(), Grow::Grew | Grow::Busy);
            }
        }
    }

    /// The pool (first or grown) holding `phys`.
    fn pool_of(&self, phys: PhysAddr) -> Result<NonNull<Pool<P>>> {
        let pools = self.pools.read();
        find(&pools, phys)
            .map(|m| NonNull::from(&*m.pool as &Pool<P>))
            .ok_or(Error::NoPool)
    }

    /// Runs `f` on the pool holding `phys` for `dev`: a shared pool, else
    /// (only for a device that ever had one) one of
    /// its transient pools. `None` if no pool holds it.
    fn with_pool_of<T, R>(
        &self,
        dev: &Device<T>,
        phys: PhysAddr,
        f: impl FnOnce(&Pool<P>) -> R,
    ) -> Option<(R, bool)> {
        {
            let pools = self.pools.read();
            if let Some(m) = find(&pools, phys) {
                return Some((f(&m.pool), false));
            }
        }
        if !dev.tracking().used() {
            return None;
        }
        let mine = dev
            .tracking()
            .get()
            .ranges
            .lock()
            .iter()
            .any(|&(s, e)| (s..e).contains(&phys.0));
        if !mine {
            return None;
        }
        let m = {
            let t = self.transients.lock();
            find(&t, phys).cloned()
        }?;
        Some((f(&m.pool), true))
    }

    /// Asks for background growth, grows if asked, and gives back at most
    /// one grown pool that has been idle for [`DynConfig::idle`]. Returns
    /// whether a pool was added and whether one was given back.
    ///
    /// Call it periodically where sleeping is allowed (a kernel's worker,
    /// a VMM's timer thread); it runs the provider and the hooks.
    ///
    /// # Errors
    /// A failed release's [`ProviderError::Leaked`]: the pool left the tlb
    /// but its memory was leaked rather than freed.
    pub fn maintain(&self) -> core::result::Result<(bool, bool), ProviderError> {
        let mut grew = false;
        if self.grow_wanted.swap(false, Ordering::Relaxed) {
            grew = self.grow() == Grow::Grew;
        }
        let now = self.clock.now_ns();
        let idle = self.config.idle;
        let mut victim = None;
        {
            let pools = self.pools.read();
            for m in pools.iter().filter(|m| m.kind == Kind::Grown) {
                let activity = m.pool.stats().bytes_to_device;
                let mut st = m.idle.lock();
                if m.pool.used_slots() != 0 || activity != st.activity {
                    st.activity = activity;
                    st.since = now;
                } else if victim.is_none() && now.saturating_sub(st.since) >= idle {
                    victim = Some((m.start(), activity));
                }
            }
        }
        // Hysteresis: nothing goes back while the tlb grew within the idle
        // time, and at most one pool per idle time.
        let quiet = now.saturating_sub(self.last_grow.load(Ordering::Relaxed)) >= idle
            && now.saturating_sub(self.last_shrink.load(Ordering::Relaxed)) >= idle;
        let Some((start, activity)) = victim.filter(|_| quiet && !grew) else {
            return Ok((grew, false));
        };
        // The set without the pool, indexed with no lock held; used only
        // if nothing changed meanwhile.
        let draft = {
            let pools = self.pools.read();
            let at = pools.starts.partition_point(|&p| p < start);
            (pools.starts.get(at) == Some(&start)).then(|| pools.draft_remove(at))
        };
        let draft = draft.map(Draft::build_index);
        let (removed, replaced) = {
            let mut pools = self.pools.write();
            let at = pools.starts.partition_point(|&p| p < start);
            // Checked again under the write lock: no allocation can be in
            // flight in any pool now (they run under the read lock).
            let still_idle = pools.members.get(at).is_some_and(|m| {
                m.start() == start
                    && m.pool.used_slots() == 0
                    && m.pool.stats().bytes_to_device == activity
            });
            match (still_idle, draft) {
                (true, Some(d)) => {
                    let (m, old) = pools.remove_drafted(at, d);
                    (Some(m), Some(old))
                }
                (true, None) => (Some(pools.remove(at)), None),
                (false, d) => (None, d),
            }
        };
        // Freed with no lock held.
        drop(replaced);
        let Some(m) = removed else {
            return Ok((grew, false));
        };
        self.last_shrink.store(now, Ordering::Relaxed);
        self.counters.pools_removed.fetch_add(1, Ordering::Relaxed);
        self.hint.store(0, Ordering::Relaxed);
        let bytes = m.bytes;
        let r = match Arc::try_unwrap(m) {
            Ok(member) => member.pool.release(),
            // Nothing else holds grown pools; if something did, its drop
            // releases the pool.
            Err(_) => Ok(()),
        };
        self.unreserve(bytes);
        r.map(|()| (grew, true))
    }
}

impl<V: Provider, H: MemoryHooks, P: Policy> Drop for DynTlb<V, H, P> {
    /// Requests still queued complete with [`Error::TlbGone`]: a callback
    /// runs exactly once even when its tlb goes away first (and one that
    /// panics does not stop the others: see [`DynTlb::bounce_deferred_raw`]).
    fn drop(&mut self) {
        let pending: Vec<Entry<P>> = self.queue.lock().drain(..).collect();
        for entry in pending {
            self.complete(entry, Err(Error::TlbGone));
        }
    }
}

/// Pools sorted by address, with their first and last addresses in plain
/// arrays beside them, and (for the tlb's pools) a granule index over
/// them. A lookup reads a hash slot and two 8-byte keys, about 21 ns with
/// the read lock at 1, 100 and 10,000 pools alike; the binary search it
/// falls back to reads 8-byte keys packed in cache lines instead of
/// chasing a pointer to each pool (at 10,000 pools, 268 ns a lookup became
/// ~60 ns that way).
struct Set<V: Provider, H: MemoryHooks, P: Policy> {
    starts: Vec<u64>,
    /// Each member's last byte, beside `starts`, so that a lookup checks
    /// bounds without chasing a member pointer.
    lasts: Vec<u64>,
    members: Vec<Arc<Member<V, H, P>>>,
    /// Whether to keep `index`: for the pools, which change only when the
    /// tlb grows or shrinks, not for the transient pools, which come and
    /// go with mappings and are searched only for the devices that have
    /// them.
    indexed: bool,
    /// The constant-time lookup, rebuilt when a member comes or goes;
    /// `None` (binary search) when not kept or when the members differ too
    /// much in size.
    index: Option<Granules>,
    /// Counts changes, so that a [`Draft`] made from an older state is
    /// not used.
    generation: u64,
}

/// The arrays and index of a set with one member added, worked out from a
/// snapshot without holding the set's write lock (rebuilding the index of
/// 10,000 pools takes about 0.17 ms, which readers should not wait for).
struct Draft {
    generation: u64,
    starts: Vec<u64>,
    lasts: Vec<u64>,
    /// Whether the set keeps an index ([`Set::indexed`]).
    indexed: bool,
    index: Option<Granules>,
}

impl<V: Provider, H: MemoryHooks, P: Policy> Default for Set<V, H, P> {
    fn default() -> Self {
        Self {
            starts: Vec::new(),
            lasts: Vec::new(),
            members: Vec::new(),
            indexed: false,
            index: None,
            generation: 0,
        }
    }
}

impl Draft {
    /// Builds the index of the drafted arrays, if the set keeps one.
    fn build_index(mut self) -> Self {
        if self.indexed {
            self.index = Granules::build(&self.starts, &self.lasts);
        }
        self
    }
}

/// The first and last byte of member `m`. A pool is never empty, so its
/// last byte does not wrap.
fn bounds<V: Provider, H: MemoryHooks, P: Policy>(m: &Member<V, H, P>) -> (u64, u64) {
    (m.start(), m.start() + (m.pool.len() as u64 - 1))
}

impl<V: Provider, H: MemoryHooks, P: Policy> Set<V, H, P> {
    /// The pools of a tlb, starting with its first, indexed.
    fn one(m: Arc<Member<V, H, P>>) -> Self {
        let mut s = Self {
            indexed: true,
            ..Self::default()
        };
        s.insert(m);
        s
    }

    fn reindex(&mut self) {
        if self.indexed {
            self.index = Granules::build(&self.starts, &self.lasts);
        }
    }

    fn insert(&mut self, m: Arc<Member<V, H, P>>) {
        let (start, last) = bounds(&m);
        let at = self.starts.partition_point(|&p| p < start);
        self.starts.insert(at, start);
        self.lasts.insert(at, last);
        self.members.insert(at, m);
        self.reindex();
        self.generation += 1;
    }

    fn remove(&mut self, at: usize) -> Arc<Member<V, H, P>> {
        self.starts.remove(at);
        self.lasts.remove(at);
        let m = self.members.remove(at);
        self.reindex();
        self.generation += 1;
        m
    }

    /// A copy of the arrays with `m` added, to index outside the lock
    /// ([`Draft::build_index`]) and install with [`Set::insert_drafted`].
    fn draft_insert(&self, m: &Member<V, H, P>) -> Draft {
        let (start, last) = bounds(m);
        let at = self.starts.partition_point(|&p| p < start);
        let mut starts = Vec::with_capacity(self.starts.len() + 1);
        starts.extend_from_slice(&self.starts[..at]);
        starts.push(start);
        starts.extend_from_slice(&self.starts[at..]);
        let mut lasts = Vec::with_capacity(self.lasts.len() + 1);
        lasts.extend_from_slice(&self.lasts[..at]);
        lasts.push(last);
        lasts.extend_from_slice(&self.lasts[at..]);
        self.draft(starts, lasts)
    }

    /// A draft of this set with these arrays, not yet indexed.
    fn draft(&self, starts: Vec<u64>, lasts: Vec<u64>) -> Draft {
        Draft {
            generation: self.generation,
            starts,
            lasts,
            indexed: self.indexed,
            index: None,
        }
    }

    /// Takes the arrays and index of `draft`, leaving the replaced ones in
    /// it. The members must already match the draft's arrays.
    fn adopt(&mut self, draft: &mut Draft) {
        core::mem::swap(&mut self.starts, &mut draft.starts);
        core::mem::swap(&mut self.lasts, &mut draft.lasts);
        core::mem::swap(&mut self.index, &mut draft.index);
        self.generation += 1;
    }

    /// A copy of the arrays without member `at`, as [`Set::draft_insert`]
    /// for [`Set::remove_drafted`].
    fn draft_remove(&self, at: usize) -> Draft {
        let mut starts = self.starts.clone();
        let mut lasts = self.lasts.clone();
        starts.remove(at);
        lasts.remove(at);
        self.draft(starts, lasts)
    }

    /// Removes member `at`, using `draft` (made by [`Set::draft_remove`]
    /// for the same member) if nothing changed since it was made, else as
    /// [`Set::remove`] does. Returns the member and what it replaced, for
    /// the caller to free after dropping the lock.
    fn remove_drafted(&mut self, at: usize, mut draft: Draft) -> (Arc<Member<V, H, P>>, Draft) {
        if draft.generation != self.generation {
            return (self.remove(at), draft);
        }
        let m = self.members.remove(at);
        self.adopt(&mut draft);
        (m, draft)
    }

    /// Adds `m`, using `draft` (made by [`Set::draft_insert`] for `m`) if
    /// nothing changed since it was made, else as [`Set::insert`] does.
    /// Returns what it replaced, for the caller to free after dropping the
    /// lock.
    fn insert_drafted(&mut self, m: Arc<Member<V, H, P>>, mut draft: Draft) -> Draft {
        if draft.generation != self.generation {
            self.insert(m);
            return draft;
        }
        let at = self.starts.partition_point(|&p| p < m.start());
        self.members.insert(at, m);
        self.adopt(&mut draft);
        draft
    }

    /// The index of the member holding `phys`.
    #[inline]
    fn index_of(&self, phys: PhysAddr) -> Option<usize> {
        if let Some(g) = &self.index {
            return g.find(phys.0, &self.starts, &self.lasts);
        }
        let at = self
            .starts
            .partition_point(|&p| p <= phys.0)
            .checked_sub(1)?;
        (phys.0 <= self.lasts[at]).then_some(at)
    }
}

impl<V: Provider, H: MemoryHooks, P: Policy> core::ops::Deref for Set<V, H, P> {
    type Target = [Arc<Member<V, H, P>>];
    fn deref(&self) -> &Self::Target {
        &self.members
    }
}

/// The member of `set` holding `phys`.
fn find<V: Provider, H: MemoryHooks, P: Policy>(
    set: &Set<V, H, P>,
    phys: PhysAddr,
) -> Option<&Arc<Member<V, H, P>>> {
    set.index_of(phys).map(|i| &set.members[i])
}

impl<V: Provider, H: MemoryHooks, P: Policy> AfterRelease for DynTlb<V, H, P> {
    /// Runs under the pool set's read lock: [`DynTlb::maintain`] removes
    /// a grown pool under the write lock, after checking that it is idle,
    /// so it waits for every release in flight, and a pool it finds idle
    /// holds no slot anyone could still be giving back. This is the grace
    /// period: `Pool::release` touches the pool after the unlock that may
    /// make it idle, and its `&self` must stay valid until it returns.
    fn guard_release(&self, release: &mut dyn FnMut()) {
        let _pools = self.pools.read();
        release();
    }

    fn after_release(&self, pool_start: PhysAddr, transient: bool) {
        if transient {
            self.drop_transient(pool_start);
        }
        // No lost wakeup without a fence: the enqueuer stores the queue
        // length, then serves the queue, which takes every area lock of
        // every pool while it tries them; these slots were given back
        // under one of those locks. Either the enqueuer took that lock
        // after the release (and sees the slots free), or before it, and
        // then its store happened before this load (the loom model
        // `deferred_vs_unmap` checks both orders).
        if self.queued.load(Ordering::Acquire) > 0 {
            self.service();
        }
    }
}

impl<V: Provider, H: MemoryHooks, P: Policy> DynTlb<V, H, P> {
    /// Bounces `size` bytes at `orig` (CPU address `cpu`) for `dev`
    /// through the tlb, growing or making a transient pool as the
    /// [module documentation](self) says; with [`Attrs::MAY_SLEEP`] under
    /// `std` it may wait up to [`DynConfig::wait_timeout`].
    ///
    /// # Errors
    /// As [`Pool::bounce_raw`], and [`Error::TimedOut`].
    ///
    /// # Safety
    /// As [`Pool::bounce_raw`].
    pub unsafe fn bounce_raw<T: Translate + Clone + Send + Sync + 'static>(
        &self,
        dev: &Device<T>,
        orig: PhysAddr,
        cpu: *mut u8,
        size: usize,
        attrs: Attrs,
        opts: MapOptions,
    ) -> Result<Bounce> {
        // SAFETY: the caller's obligations, passed on.
        unsafe { self.place(dev, orig, cpu, size, attrs, opts) }.map(|p| p.bounce)
    }

    /// Unmaps a bounce of `dev` by its device address (as
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
    pub unsafe fn unmap_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        size: usize,
        dir: Direction,
        attrs: Attrs,
    ) -> Result {
        let phys = dev.translate().dma_to_phys(dma);
        let found = self.with_pool_of(dev, phys, |pool| {
            // SAFETY: the caller's obligations, passed on; `phys` is `dma`
            // translated for this device.
            let r = unsafe { pool.unmap_at(dma, phys, size, dir, attrs) };
            (r, pool.start())
        });
        match found {
            None => crate::map::outside(dev, dma, phys, size),
            Some(((r, start), transient)) => {
                if r.is_ok() {
                    self.after_release(start, transient);
                }
                r
            }
        }
    }

    /// Copies device writes to the CPU (as [`Pool::sync_for_cpu_raw`]).
    ///
    /// # Errors
    /// As [`Pool::sync_for_cpu_raw`].
    ///
    /// # Safety
    /// As [`Pool::sync_for_cpu_raw`].
    pub unsafe fn sync_for_cpu_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        size: usize,
        dir: Direction,
    ) -> Result {
        // SAFETY: the caller's obligations, passed on.
        unsafe { self.sync_raw(dev, dma, size, false, dir.copies_to_cpu()) }
    }

    /// Copies CPU writes to the device (as [`Pool::sync_for_device_raw`]).
    ///
    /// # Errors
    /// As [`Pool::sync_for_device_raw`].
    ///
    /// # Safety
    /// As [`Pool::sync_for_device_raw`].
    pub unsafe fn sync_for_device_raw<T: Translate>(
        &self,
        dev: &Device<T>,
        dma: DmaAddr,
        size: usize,
        dir: Direction,
    ) -> Result {
        // SAFETY: the caller's obligations, passed on.
        unsafe { self.sync_raw(dev, dma, size, true, dir.copies_to_device()) }
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
        to_device: bool,
        copy: bool,
    ) -> Result {
        let phys = dev.translate().dma_to_phys(dma);
        self.with_pool_of(dev, phys, |pool| {
            // SAFETY: the caller's obligations, passed on; `phys` is `dma`
            // translated for this device.
            unsafe { pool.sync_at(dma, phys, size, to_device, copy) }
        })
        .map_or_else(|| crate::map::outside(dev, dma, phys, size), |(r, _)| r)
    }

    /// Bounces now if there is room, else queues the request and calls
    /// `done` once, in FIFO order with every other queued request, when
    /// slots free up or the tlb grows (never on this call's stack unless
    /// the room appeared while it queued). The request asks for a
    /// background growth. `done` runs on the thread that freed the slots,
    /// with no lock of the tlb held: it must not sleep, and may map and
    /// unmap.
    ///
    /// A callback that panics (under `std`) is caught where it runs: the
    /// panic never unwinds into the unrelated caller whose unmap, growth
    /// or drop of the tlb served the queue, the slots it was granted are
    /// given back (without copying anything), every other queued request
    /// is still served in order, and [`DynStats::callback_panics`] counts
    /// it; the panic message has already gone to the panic hook. Without
    /// `std` a panic does not unwind (the panic handler never returns).
    /// If the tlb is dropped first, `done` runs once with
    /// [`Error::TlbGone`].
    ///
    /// # Errors
    /// Only errors that waiting cannot mend ([`Error::TooLarge`],
    /// [`Error::AlignmentImpossible`], [`Error::Unreachable`]...), at once;
    /// `done` is then dropped uncalled.
    ///
    /// # Safety
    /// As [`Pool::bounce_raw`], with `cpu` valid from this call until the
    /// request is unmapped, or cancelled with [`DynTlb::cancel`] returning
    /// `true`.
    pub unsafe fn bounce_deferred_raw<T: Translate + Clone + Send + Sync + 'static>(
        &self,
        dev: &Device<T>,
        orig: PhysAddr,
        cpu: *mut u8,
        size: usize,
        opts: MapOptions,
        done: impl FnOnce(Result<Bounce>) + Send + 'static,
    ) -> Result<Deferral> {
        if self.queued.load(Ordering::Acquire) == 0 {
            let device = dev;
            let mut attempt = |pool: &Pool<P>| pool.bounce_alloc(device, orig, cpu, size, opts);
            // SAFETY: the caller's obligations, passed on.
            let r = unsafe { self.try_pools_copy(&mut attempt, cpu, size) };
            match r {
                Ok((b, _)) => return Ok(Deferral::Now(b)),
                Err(e) if is_full(&e) => {}
                Err(e) => {
                    self.count_failure(&e);
                    return Err(e);
                }
            }
        }
        self.want_growth();
        let device = dev.clone();
        let cpu = SendPtr(cpu);
        let attempt = Box::new(move |pool: &Pool<P>| {
            let cpu = cpu;
            pool.bounce_alloc(&device, orig, cpu.0, size, opts)
        });
        // SAFETY: the caller keeps `cpu` valid until the request is
        // unmapped or cancelled (this function's contract).
        let ticket =
            unsafe { self.enqueue(attempt, cpu, size, Sink::Callback(Box::new(done)), None) };
        Ok(Deferral::Queued(Ticket(ticket)))
    }

    /// Maps a buffer for `dev`, taking ownership of it: directly when the
    /// device reaches it and is not forced to bounce, else through the
    /// tlb as [`DynTlb::bounce_raw`] does (with [`Attrs::MAY_SLEEP`] it
    /// may grow the tlb and wait).
    ///
    /// # Errors
    /// A [`MapFailed`] with the reason and the buffer.
    pub fn map<B: DmaBuffer, T: Translate + Clone + Send + Sync + 'static>(
        &self,
        dev: &Device<T>,
        buffer: B,
        dir: Direction,
        attrs: Attrs,
    ) -> core::result::Result<Mapping<'_, B, P>, MapFailed<B>> {
        let buffer = RawBuffer::new(buffer);
        let (ptr, len) = (buffer.ptr(), buffer.len());
        let d = dev;
        let (phys, direct) = d.direct(ptr.as_ptr(), len);
        if direct {
            let dma = d.phys_to_dma(phys);
            return Ok(Mapping::direct(Some(&self.first.pool), buffer, dma, dir));
        }
        // SAFETY: `ptr` is valid for reads and writes of `len` bytes and
        // nothing else accesses them while the buffer is taken apart
        // (`DmaBuffer`); the returned mapping holds the parts and touches
        // the bytes only through the pool's copies until unmap. `phys` is
        // their physical address.
        let r = unsafe { self.place(dev, phys, ptr.as_ptr(), len, attrs, MapOptions::default()) };
        match r {
            Ok(p) => Ok(self.mapping(p, buffer, dir)),
            Err(error) => Err(MapFailed::new(error, buffer)),
        }
    }

    /// The safe mapping of `buffer`, bounced as `p` says.
    fn mapping<B: DmaBuffer>(
        &self,
        p: Placed<P>,
        buffer: RawBuffer<B>,
        dir: Direction,
    ) -> Mapping<'_, B, P> {
        let first: &Pool<P> = &self.first.pool;
        let held = if p.transient {
            Held::Transient
        } else if core::ptr::eq(p.pool.as_ptr(), first) {
            Held::Lasting
        } else {
            Held::Grown
        };
        // SAFETY: `p.pool` points at a pool of this tlb that holds `p`'s
        // slots: the tlb releases no pool holding a live allocation (grown
        // pools are given back only when they hold no slot, and not while
        // a guarded release runs in them; transient ones only after their
        // mapping's release), so it is valid here.
        let pool = unsafe { p.pool.as_ref() };
        // SAFETY:
        // - `p.bounce` was allocated in `pool` for this buffer's region and
        //   is owned by the new mapping alone;
        // - `pool` lives as `held` says: the first pool for the tlb's life,
        //   a grown or transient one until its slots are given back (as
        //   above).
        unsafe {
            Mapping::bounced(
                pool,
                Some(self as &dyn AfterRelease),
                held,
                buffer,
                dir,
                p.bounce,
            )
        }
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
    ) -> MapFuture<'_, B, T, V, H, P> {
        MapFuture {
            tlb: self,
            device: dev.clone(),
            buffer: Some(RawBuffer::new(buffer)),
            dir,
            ticket: None,
        }
    }
}

/// The future of [`DynTlb::map_async`]. It holds the buffer taken apart
/// (see [`DmaBuffer`]), so that a queued request's copy from it stays
/// valid however the future moves.
pub struct MapFuture<'t, B: DmaBuffer, T, V: Provider, H: MemoryHooks, P: Policy> {
    tlb: &'t DynTlb<V, H, P>,
    device: Device<T>,
    buffer: Option<RawBuffer<B>>,
    dir: Direction,
    ticket: Option<Arc<TicketInner>>,
}

impl<B, T, V, H, P> MapFuture<'_, B, T, V, H, P>
where
    B: DmaBuffer,
    V: Provider,
    H: MemoryHooks,
    P: Policy,
{
    /// Waits for a popped request's outcome: `complete` sets it right
    /// after the pop, without blocking.
    fn outcome(ticket: &TicketInner) -> Option<Result<Bounce>> {
        loop {
            let mut st = ticket.state.lock();
            if st.phase == Phase::Completed {
                return st.outcome.take();
            }
            drop(st);
            core::hint::spin_loop();
        }
    }
}

// The future holds no self-reference: the queued request points into the
// buffer's bytes, which stay put whatever moves (the buffer is taken
// apart), so moving the future between polls is fine.
impl<B, T, V, H, P> Unpin for MapFuture<'_, B, T, V, H, P>
where
    B: DmaBuffer,
    V: Provider,
    H: MemoryHooks,
    P: Policy,
{
}

impl<'t, B, T, V, H, P> Future for MapFuture<'t, B, T, V, H, P>
where
    B: DmaBuffer,
    T: Translate + Clone + Send + Sync + 'static,
    V: Provider,
    H: MemoryHooks,
    P: Policy,
{
    type Output = core::result::Result<Mapping<'t, B, P>, MapFailed<B>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let tlb = this.tlb;
        let Some(buffer) = this.buffer.take() else {
            panic!("MapFuture polled after it completed");
        };
        let (ptr, len) = (buffer.ptr(), buffer.len());
        if let Some(ticket) = &this.ticket {
            let mut st = ticket.state.lock();
            if st.phase != Phase::Completed {
                st.waker = Some(cx.waker().clone());
                drop(st);
                this.buffer = Some(buffer);
                return Poll::Pending;
            }
            let r = st.outcome.take().unwrap_or(Err(Error::NoPool));
            drop(st);
            this.ticket = None;
            return Poll::Ready(match r.and_then(|b| tlb.pool_of(b.phys).map(|p| (b, p))) {
                Ok((bounce, pool)) => {
                    let placed = Placed {
                        bounce,
                        pool,
                        transient: false,
                    };
                    Ok(tlb.mapping(placed, buffer, this.dir))
                }
                Err(error) => Err(MapFailed::new(error, buffer)),
            });
        }
        let d = &this.device;
        let (phys, direct) = d.direct(ptr.as_ptr(), len);
        if direct {
            let dma = d.phys_to_dma(phys);
            let m = Mapping::direct(Some(&tlb.first.pool), buffer, dma, this.dir);
            return Poll::Ready(Ok(m));
        }
        let cpu = ptr.as_ptr();
        if tlb.queued.load(Ordering::Acquire) == 0 {
            let mut attempt =
                |pool: &Pool<P>| pool.bounce_alloc(d, phys, cpu, len, MapOptions::default());
            // SAFETY: `cpu` is valid for `len` bytes and nothing else
            // accesses them while the buffer is taken apart (`DmaBuffer`);
            // the mapping returned holds the parts.
            let r = unsafe { tlb.try_pools_copy(&mut attempt, cpu, len) };
            match r {
                Ok((bounce, pool)) => {
                    let placed = Placed {
                        bounce,
                        pool,
                        transient: false,
                    };
                    return Poll::Ready(Ok(tlb.mapping(placed, buffer, this.dir)));
                }
                Err(e) if is_full(&e) => {}
                Err(error) => {
                    tlb.count_failure(&error);
                    return Poll::Ready(Err(MapFailed::new(error, buffer)));
                }
            }
        }
        tlb.want_growth();
        let device = d.clone();
        let cpu = SendPtr(cpu);
        let attempt = Box::new(move |pool: &Pool<P>| {
            let cpu = cpu;
            pool.bounce_alloc(&device, phys, cpu.0, len, MapOptions::default())
        });
        this.buffer = Some(buffer);
        let waker = Some(cx.waker().clone());
        // SAFETY: the future holds the buffer's parts until the request
        // completes or is cancelled (its drop cancels it, and gives back
        // the slots of a request that completed unseen, before the parts
        // are put back together); the bytes stay put however the future
        // moves (`DmaBuffer`).
        this.ticket = Some(unsafe { tlb.enqueue(attempt, cpu, len, Sink::Store, waker) });
        // It may have completed while queuing: its waker was woken, so
        // the next poll sees it.
        Poll::Pending
    }
}

impl<B: DmaBuffer, T, V: Provider, H: MemoryHooks, P: Policy> Drop
    for MapFuture<'_, B, T, V, H, P>
{
    fn drop(&mut self) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        if self.tlb.cancel_inner(&ticket) {
            self.tlb.counters.cancelled.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Completed, unseen: give its slots back so nothing is lost.
        if let Some(Ok(b)) = Self::outcome(&ticket) {
            let start = {
                let pools = self.tlb.pools.read();
                find(&pools, b.phys).map(|m| {
                    let pool: &Pool<P> = &m.pool;
                    let _ = pool.release(b.start, b.nslots, b.dma, 0, 0);
                    pool.start()
                })
            };
            if let Some(start) = start {
                self.tlb.after_release(start, false);
            }
        }
        // The buffer field drops after this, put back together: no queued
        // copy can reach it any more.
    }
}

/// A thread that calls [`DynTlb::maintain`] periodically: background
/// growth for callers that could not grow themselves, and shrinking.
/// Stops (and joins the thread) when dropped.
#[cfg(all(feature = "std", not(swiotlb_loom)))]
pub struct Maintainer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[cfg(all(feature = "std", not(swiotlb_loom)))]
impl<V, H, P> DynTlb<V, H, P>
where
    V: Provider + 'static,
    H: MemoryHooks + 'static,
    P: Policy + 'static,
{
    /// Starts a [`Maintainer`] calling [`DynTlb::maintain`] every
    /// `period`, and also at once whenever a request asks for growth.
    /// Errors of `maintain` (a leaked pool) go to `on_error`.
    pub fn spawn_maintainer(
        self: &Arc<Self>,
        period: std::time::Duration,
        on_error: fn(ProviderError),
    ) -> Maintainer {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tlb = Arc::downgrade(self);
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            // A request for growth unparks this thread at once; the full
            // pass runs every `period`.
            let mut last = std::time::Instant::now();
            while !flag.load(std::sync::atomic::Ordering::Acquire) {
                let Some(tlb) = tlb.upgrade() else { return };
                if tlb.grow_wanted.load(Ordering::Relaxed) || last.elapsed() >= period {
                    last = std::time::Instant::now();
                    if let Err(e) = tlb.maintain() {
                        on_error(e);
                    }
                }
                let wait = period.saturating_sub(last.elapsed());
                drop(tlb);
                std::thread::park_timeout(wait);
            }
        });
        *self.maintainer.lock() = Some(thread.thread().clone());
        Maintainer {
            stop,
            thread: Some(thread),
        }
    }
}

#[cfg(all(feature = "std", not(swiotlb_loom)))]
impl Drop for Maintainer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

#[cfg(all(feature = "std", not(swiotlb_loom)))]
impl core::fmt::Debug for Maintainer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Maintainer").finish_non_exhaustive()
    }
}
