//! Growth: how a tlb adds pools from a [`Provider`], makes transient pools
//! for callers that may not sleep, and gives idle pools back.
//!
//! Linux 6.6 added dynamic swiotlb (`CONFIG_SWIOTLB_DYNAMIC`): a default
//! pool that grows by background work, and transient pools of exactly one
//! mapping for callers that cannot wait. Its pools never shrink, and a
//! transient pool's memory is decrypted on a path that may not sleep. Here
//! growth is a part a tlb may have or not (see [`IoTlb`]):
//!
//! - **Growth** adds a pool of [`GrowConfig::grow_by`] bytes, up to
//!   [`GrowConfig::max`] bytes held in all. A caller that may sleep
//!   ([`Attrs::MAY_SLEEP`](crate::Attrs::MAY_SLEEP)) grows the tlb itself;
//!   any other caller asks for a background growth, done by
//!   [`IoTlb::maintain`]. Memory comes from the provider and the platform
//!   hooks run on it (share, remap) outside every lock of this crate,
//!   exactly as for a [`ProvidedPool`].
//! - A caller that may not sleep and finds every pool full gets a
//!   **transient pool** of exactly its mapping, if the provider can give
//!   memory without sleeping ([`Provider::alloc_nowait`]) and the hooks can
//!   run without sleeping ([`MemoryHooks::nowait`]). The pool is tracked on
//!   its [`Device`] and given back when its mapping is unmapped.
//! - **Shrinking**: [`IoTlb::maintain`] gives back a grown pool that has
//!   been completely free and untouched for [`GrowConfig::idle`]: at most
//!   one pool per idle time, and none while the tlb grew within it, so a
//!   steady workload does not thrash. The first pool is never given back,
//!   and no pool is given back while one mapping lives in it.

use alloc::sync::Arc;
use core::task::Waker;

use super::set::{Draft, Set};
use super::{IoTlb, Placed};
use crate::addr::PhysAddr;
use crate::device::{Device, Tracked};
use crate::error::{ConfigProblem, Error};
use crate::map::{Held, MapOptions};
use crate::pool::{Policy, Pool, PoolConfig};
use crate::provider::{self, MemoryHooks, NoHooks, ProvidedPool, Provider, ProviderError, Sleep};
use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, Mutex, Ordering, RwLock};
use crate::translate::Translate;

/// How a growing tlb sizes itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GrowConfig {
    /// Bytes of the first pool, when the tlb builds it from the provider
    /// ([`IoTlb::growing`]); built at once and never given back.
    pub start: usize,
    /// Bytes of each pool added by growth. At least one segment (the
    /// largest mapping), so that any mapping fits a fresh pool.
    pub grow_by: usize,
    /// The most bytes held at once: the first pool, grown pools and
    /// transient pools together.
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
    /// before [`IoTlb::maintain`] gives it back, in nanoseconds; also the
    /// quiet time after a growth before any pool is given back.
    pub idle: u64,
    /// How long a caller that may sleep waits for slots before it fails
    /// with [`Error::TimedOut`], in nanoseconds.
    pub wait_timeout: u64,
}

impl GrowConfig {
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
            dma_bits: provider::XEN_DMA_BITS,
            idle: 1_000_000_000,
            wait_timeout: 1_000_000_000,
        }
    }

    /// Bytes of the largest mapping a pool of this geometry holds.
    fn segment_bytes(&self) -> usize {
        (self.pool.segment as usize) << self.pool.slot_shift
    }

    /// The first problem of this configuration for a tlb whose first pool
    /// holds `first` bytes.
    pub(crate) fn problem(&self, first: usize) -> Option<ConfigProblem> {
        let segment = self.segment_bytes();
        if first < segment {
            Some(ConfigProblem::StartBelowSegment {
                start: first,
                segment,
            })
        } else if self.grow_by < segment {
            Some(ConfigProblem::GrowBelowSegment {
                grow_by: self.grow_by,
                segment,
            })
        } else if self.max < first {
            Some(ConfigProblem::MaxBelowStart {
                start: first,
                max: self.max,
            })
        } else {
            None
        }
    }
}

/// The provider a tlb grows from, type-erased so that tlbs of different
/// providers sit in one [`Platform`](super::Platform).
pub(crate) type DynProvider = Arc<dyn Provider>;
/// The memory hooks a tlb runs on new pools, type-erased.
pub(crate) type DynHooks = Arc<dyn MemoryHooks>;

/// What a tlb grows from: a provider of memory, the hooks that prepare it,
/// and the sizes. Give it to [`IoTlb::growing`] (the first pool comes from
/// the provider too) or [`IoTlb::with_growth`] (the first pool is yours).
#[derive(Clone)]
pub struct Growth {
    pub(crate) provider: DynProvider,
    pub(crate) hooks: DynHooks,
    pub(crate) config: GrowConfig,
}

impl Growth {
    /// Growth from `provider`, with no hooks (memory is used as the
    /// provider gives it).
    pub fn new(provider: impl Provider + 'static, config: GrowConfig) -> Self {
        Self {
            provider: Arc::new(provider),
            hooks: Arc::new(NoHooks),
            config,
        }
    }

    /// The hooks that prepare every new pool's memory (share it with the
    /// host, remap it below a DMA width) and undo that before it is freed.
    pub fn with_hooks(mut self, hooks: impl MemoryHooks + 'static) -> Self {
        self.hooks = Arc::new(hooks);
        self
    }

    /// The sizes.
    pub fn config(&self) -> &GrowConfig {
        &self.config
    }
}

impl core::fmt::Debug for Growth {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Growth")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// When a grown pool was last seen busy.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Idle {
    /// Bytes copied into the pool, at the last look (activity measure).
    activity: u64,
    /// When the pool was last seen holding slots or active.
    since: u64,
}

/// One grown or transient pool of a tlb.
pub(crate) struct Member<P: Policy> {
    pub(crate) pool: ProvidedPool<DynProvider, DynHooks, P>,
    /// Bytes the member counts against [`GrowConfig::max`].
    pub(crate) bytes: usize,
    pub(crate) idle: Mutex<Idle>,
    /// The device a transient pool belongs to.
    pub(crate) owner: Option<Arc<Tracked>>,
}

impl<P: Policy> Member<P> {
    pub(crate) fn start(&self) -> u64 {
        self.pool.start().0
    }
}

/// How a growth attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Grow {
    Grew,
    /// Another caller is growing; its growth serves the queue.
    Busy,
    /// Growing would pass [`GrowConfig::max`], or the tlb has no growth.
    Limit,
    /// The provider or a hook failed.
    Failed(ProviderError),
}

/// Why no transient pool was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TransientFailed {
    /// None could be: no growth, the limit, a provider or hooks that
    /// cannot work without sleeping, or a mapping it could not hold.
    NotTried,
    /// The provider or a hook failed (counted in `grow_failures`).
    Provider,
}

/// The growth state of a tlb that has a provider.
pub(crate) struct Grower<P: Policy> {
    pub(crate) growth: Growth,
    /// The grown pools, sorted by address (the first pool is not here).
    pub(crate) pools: RwLock<Set<P>>,
    /// Transient pools, sorted by address.
    pub(crate) transients: Mutex<Set<P>>,
    pub(crate) held: AtomicUsize,
    pub(crate) peak_held: AtomicUsize,
    pub(crate) growing: AtomicBool,
    pub(crate) grow_wanted: AtomicBool,
    pub(crate) last_grow: AtomicU64,
    pub(crate) last_shrink: AtomicU64,
    /// The grown pool where the last successful search ended.
    pub(crate) hint: AtomicUsize,
    pub(crate) pools_added: AtomicU64,
    pub(crate) pools_removed: AtomicU64,
    pub(crate) grow_failures: AtomicU64,
    pub(crate) transient_made: AtomicU64,
    /// Woken when growth is asked for: set with
    /// [`IoTlb::set_growth_waker`] by whoever runs [`IoTlb::maintain`] in
    /// the background (`swiotlb_host::Maintainer`, a kernel's worker).
    pub(crate) waker: Mutex<Option<Waker>>,
}

impl<P: Policy> Grower<P> {
    /// Growth state for a tlb whose first pool holds `first` bytes, at
    /// time `now`.
    pub(crate) fn new(growth: Growth, first: usize, now: u64) -> Self {
        Self {
            growth,
            pools: RwLock::new(Set::indexed()),
            transients: Mutex::new(Set::default()),
            held: AtomicUsize::new(first),
            peak_held: AtomicUsize::new(first),
            growing: AtomicBool::new(false),
            grow_wanted: AtomicBool::new(false),
            last_grow: AtomicU64::new(now),
            last_shrink: AtomicU64::new(now),
            hint: AtomicUsize::new(0),
            pools_added: AtomicU64::new(0),
            pools_removed: AtomicU64::new(0),
            grow_failures: AtomicU64::new(0),
            transient_made: AtomicU64::new(0),
            waker: Mutex::new(None),
        }
    }

    pub(crate) fn config(&self) -> &GrowConfig {
        &self.growth.config
    }

    /// Reserves `len` bytes under the limit.
    fn reserve(&self, len: usize) -> bool {
        let max = self.config().max;
        let mut cur = self.held.load(Ordering::Relaxed);
        loop {
            let Some(next) = cur.checked_add(len).filter(|&n| n <= max) else {
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

    /// Builds a pool of `len` bytes with geometry `config`, sleeping or
    /// not as `sleep` says.
    fn build(
        &self,
        len: usize,
        config: PoolConfig,
        sleep: Sleep,
    ) -> Result<ProvidedPool<DynProvider, DynHooks, P>, ProviderError> {
        let c = self.config();
        provider::build(
            self.growth.provider.clone(),
            self.growth.hooks.clone(),
            len,
            c.below,
            config,
            c.dma_bits,
            sleep,
        )
    }

    /// Adds grown pool `m` to the set. The new index is built between a
    /// read and the write lock, so lookups wait only for the swap.
    fn insert(&self, m: Arc<Member<P>>) {
        let draft = self.pools.read().draft_insert(&m);
        // No lock held here.
        let draft = draft.build_index();
        let old = self.pools.write().insert_drafted(m, draft);
        // Freed with no lock held.
        drop(old);
    }

    /// The grown pool holding `phys`.
    pub(crate) fn find(&self, phys: PhysAddr) -> Option<core::ptr::NonNull<Pool<P>>> {
        let pools = self.pools.read();
        super::set::find(&pools, phys).map(|m| core::ptr::NonNull::from(&*m.pool as &Pool<P>))
    }

    /// Removes the transient pool starting at `start` once its mapping is
    /// gone, and gives its memory back.
    pub(crate) fn drop_transient(&self, start: PhysAddr) {
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

    /// Runs `f` on the pool holding `phys` for `dev`: a grown pool, else
    /// (only for a device that ever had one) one of its transient pools.
    /// `None` if no pool holds it; the flag says whether it was transient.
    pub(crate) fn with_pool_of<T, R>(
        &self,
        dev: &Device<T>,
        phys: PhysAddr,
        f: impl FnOnce(&Pool<P>) -> R,
    ) -> Option<(R, bool)> {
        {
            let pools = self.pools.read();
            if let Some(m) = super::set::find(&pools, phys) {
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
            super::set::find(&t, phys).cloned()
        }?;
        Some((f(&m.pool), true))
    }
}

impl<P: Policy> IoTlb<P> {
    /// Adds one grown pool, unless another caller is growing, the limit is
    /// reached, or the tlb does not grow. May sleep; holds no lock while
    /// the provider and hooks run.
    pub(crate) fn grow(&self) -> Grow {
        let Some(g) = self.grower() else {
            return Grow::Limit;
        };
        if g.growing.swap(true, Ordering::Acquire) {
            return Grow::Busy;
        }
        let len = g.config().grow_by;
        let r = if !g.reserve(len) {
            Grow::Limit
        } else {
            match g.build(len, g.config().pool, Sleep::Allowed) {
                Ok(pool) => {
                    let now = self.clock.now_ns();
                    let m = Arc::new(Member {
                        pool,
                        bytes: len,
                        idle: Mutex::new(Idle {
                            activity: 0,
                            since: now,
                        }),
                        owner: None,
                    });
                    g.insert(m);
                    g.last_grow.store(now, Ordering::Relaxed);
                    g.pools_added.fetch_add(1, Ordering::Relaxed);
                    Grow::Grew
                }
                Err(e) => {
                    g.unreserve(len);
                    g.grow_failures.fetch_add(1, Ordering::Relaxed);
                    Grow::Failed(e)
                }
            }
        };
        g.growing.store(false, Ordering::Release);
        if r == Grow::Grew {
            self.service();
        }
        r
    }

    /// Asks [`IoTlb::maintain`] to grow the tlb; nothing for a tlb that
    /// does not grow.
    pub(crate) fn want_growth(&self) {
        let Some(g) = self.grower() else { return };
        if !g.grow_wanted.swap(true, Ordering::Relaxed) {
            // Only the first request since the last `maintain` wakes. The
            // waker is cloned out and woken after the lock is dropped, so
            // it may do anything but sleep (a waker must not). The loom
            // models install none, and taking the lock would only add
            // interleavings for them to explore.
            #[cfg(not(swiotlb_loom))]
            {
                let waker = g.waker.lock().clone();
                if let Some(w) = waker {
                    w.wake();
                }
            }
        }
    }

    /// Whether a request asked for growth it could not do itself (a caller
    /// that may not sleep found every pool full) since the last
    /// [`maintain`](IoTlb::maintain), which grows and clears it. `false`
    /// for a tlb that does not grow.
    ///
    /// For whoever runs `maintain` in the background: woken by the waker
    /// of [`set_growth_waker`](IoTlb::set_growth_waker), it calls
    /// `maintain` at once when this is `true`, rather than at its next
    /// period.
    pub fn growth_wanted(&self) -> bool {
        self.grower()
            .is_some_and(|g| g.grow_wanted.load(Ordering::Relaxed))
    }

    /// Sets the waker woken when a request asks for growth (when
    /// [`growth_wanted`](IoTlb::growth_wanted) turns `true`), replacing
    /// any earlier one; a tlb that does not grow never wakes it. A
    /// background maintainer registers itself here so that growth does
    /// not wait for its next period (`swiotlb_host::Maintainer` unparks
    /// its thread; a kernel would queue its worker).
    ///
    /// The waker is woken on the mapping path, possibly where sleeping is
    /// not allowed, with no lock of this crate held: waking must not
    /// sleep, as a [`Waker`] never should.
    pub fn set_growth_waker(&self, waker: Waker) {
        if let Some(g) = self.grower() {
            *g.waker.lock() = Some(waker);
        }
    }

    /// Makes a transient pool for one mapping of `size` bytes for `dev`
    /// and bounces into it. `None` if the tlb does not grow, the provider
    /// or hooks would sleep, the limit is reached, or the mapping does not
    /// fit.
    ///
    /// # Safety
    /// As [`Pool::bounce_raw`].
    pub(crate) unsafe fn bounce_transient<T: Translate>(
        &self,
        dev: &Device<T>,
        orig: PhysAddr,
        cpu: *mut u8,
        size: usize,
        opts: MapOptions,
    ) -> Result<Placed<P>, TransientFailed> {
        let g = self.grower().ok_or(TransientFailed::NotTried)?;
        let base = g.config().pool;
        let slot_shift = base.slot_shift;
        let slot = 1usize << slot_shift;
        let page = 1usize << base.page_shift;
        // Room for the mapping and any padding its alignment may need.
        let slack = (dev.min_align_mask() as usize | opts.alloc_align_mask as usize)
            .max(if size >= page { page - 1 } else { 0 });
        let len = size
            .checked_add(slack)
            .and_then(|l| l.checked_next_multiple_of(slot))
            .ok_or(TransientFailed::NotTried)?;
        let nslabs = (len >> slot_shift) as u32;
        let config = PoolConfig {
            segment: nslabs
                .checked_next_power_of_two()
                .ok_or(TransientFailed::NotTried)?,
            nareas: 1,
            ..base
        };
        if !g.reserve(len) {
            return Err(TransientFailed::NotTried);
        }
        let pool = match g.build(len, config, Sleep::Forbidden) {
            Ok(pool) => pool,
            Err(e) => {
                g.unreserve(len);
                if matches!(e, ProviderError::WouldSleep { .. }) {
                    return Err(TransientFailed::NotTried);
                }
                g.grow_failures.fetch_add(1, Ordering::Relaxed);
                return Err(TransientFailed::Provider);
            }
        };
        // SAFETY: `cpu` is valid for reads and writes of `size` bytes and
        // unreferenced until the unmap, and `orig` is its physical
        // address: this function's contract, which is `bounce_inner`'s.
        let r = unsafe { pool.bounce_inner(dev, orig, cpu, size, opts) };
        let Ok(bounce) = r else {
            // Nothing lives in it: give it back at once (no sleeping: the
            // memory came from `alloc_nowait` and the hooks are `nowait`).
            drop(pool);
            g.unreserve(len);
            return Err(TransientFailed::NotTried);
        };
        let tracked = dev.tracking().get();
        let m = Arc::new(Member {
            pool,
            bytes: len,
            idle: Mutex::new(Idle::default()),
            owner: Some(tracked.clone()),
        });
        let ptr = core::ptr::NonNull::from(&*m.pool as &Pool<P>);
        let range = (m.start(), m.start() + m.pool.len() as u64);
        tracked.ranges.lock().push(range);
        tracked.used.store(true, Ordering::Release);
        g.transients.lock().insert(m);
        g.transient_made.fetch_add(1, Ordering::Relaxed);
        Ok(Placed {
            bounce,
            pool: ptr,
            held: Held::Transient,
        })
    }

    /// Asks for background growth, grows if asked, and gives back at most
    /// one grown pool that has been idle for [`GrowConfig::idle`]. Returns
    /// whether a pool was added and whether one was given back; a tlb that
    /// does not grow has nothing to do.
    ///
    /// Call it periodically where sleeping is allowed (a kernel's worker,
    /// a VMM's timer thread); it runs the provider and the hooks.
    ///
    /// # Errors
    /// A failed release's [`ProviderError::Leaked`]: the pool left the tlb
    /// but its memory was leaked rather than freed.
    pub fn maintain(&self) -> Result<(bool, bool), ProviderError> {
        let Some(g) = self.grower() else {
            return Ok((false, false));
        };
        let mut grew = false;
        if g.grow_wanted.swap(false, Ordering::Relaxed) {
            grew = self.grow() == Grow::Grew;
        }
        let now = self.clock.now_ns();
        let idle = g.config().idle;
        let mut victim = None;
        {
            let pools = g.pools.read();
            for m in pools.iter() {
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
        let quiet = now.saturating_sub(g.last_grow.load(Ordering::Relaxed)) >= idle
            && now.saturating_sub(g.last_shrink.load(Ordering::Relaxed)) >= idle;
        let Some((start, activity)) = victim.filter(|_| quiet && !grew) else {
            return Ok((grew, false));
        };
        // The set without the pool, indexed with no lock held; used only
        // if nothing changed meanwhile.
        let draft = {
            let pools = g.pools.read();
            let at = pools.starts.partition_point(|&p| p < start);
            (pools.starts.get(at) == Some(&start)).then(|| pools.draft_remove(at))
        };
        let draft = draft.map(Draft::build_index);
        let (removed, replaced) = {
            let mut pools = g.pools.write();
            let at = pools.starts.partition_point(|&p| p < start);
            // Checked again under the write lock: no allocation and no
            // guarded release can be in flight in any grown pool now (they
            // run under the read lock).
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
        g.last_shrink.store(now, Ordering::Relaxed);
        g.pools_removed.fetch_add(1, Ordering::Relaxed);
        g.hint.store(0, Ordering::Relaxed);
        let bytes = m.bytes;
        let r = match Arc::try_unwrap(m) {
            Ok(member) => member.pool.release(),
            // Nothing else holds grown pools; if something did, its drop
            // releases the pool.
            Err(_) => Ok(()),
        };
        g.unreserve(bytes);
        r.map(|()| (grew, true))
    }

    /// Adds one pool of [`GrowConfig::grow_by`] bytes now, as a growth
    /// would (to grow ahead of a known burst, or from a kernel's own
    /// worker). Returns `false` if the limit is reached, another caller is
    /// growing, or the tlb does not grow. May sleep.
    ///
    /// # Errors
    /// The provider's or a hook's error.
    pub fn add_pool(&self) -> Result<bool, ProviderError> {
        match self.grow() {
            Grow::Grew => Ok(true),
            Grow::Busy | Grow::Limit => Ok(false),
            Grow::Failed(e) => Err(e),
        }
    }
}

/// Checks `growth` for a tlb whose first pool holds `first` bytes.
pub(crate) fn check(growth: &Growth, first: usize) -> Result<(), ProviderError> {
    match growth.config.problem(first) {
        Some(problem) => Err(ProviderError::Pool(Error::BadConfig { problem })),
        None => Ok(()),
    }
}
