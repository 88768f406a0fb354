//! The queue of requests that wait or are deferred: FIFO, each completed
//! exactly once or cancelled, never both, never neither.
//!
//! A caller that may sleep and cannot grow waits in the queue for freed
//! slots or for a growth, bounded by [`GrowConfig::wait_timeout`] (`std`
//! only: waiting needs a scheduler). A deferred request
//! ([`IoTlb::bounce_deferred_raw`] with a callback, [`IoTlb::map_async`]
//! as a future) joins the same queue and completes once slots free up, as
//! FreeBSD's `bus_dmamap_load` with `BUS_DMA_WAITOK` and Windows' map
//! registers do. Every tlb has the queue, growing or fixed: a fixed tlb's
//! requests complete when mappings are unmapped.
//!
//! [`GrowConfig::wait_timeout`]: super::GrowConfig::wait_timeout

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::task::Waker;

#[cfg(all(feature = "std", not(swiotlb_loom)))]
use super::grow::Grow;
use super::{is_full, Found, IoTlb};
use crate::addr::PhysAddr;
#[cfg(feature = "checker")]
use crate::checker::MapKind;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::map::MapOptions;
use crate::pool::{Bounce, Policy, Pool};
use crate::sync::{AtomicU64, AtomicUsize, Mutex, Ordering};
use crate::translate::Translate;

/// How one queued request ends.
pub(crate) enum Sink {
    /// Call this with the outcome.
    Callback(Box<dyn FnOnce(Result<Bounce>) + Send>),
    /// Store the outcome in the ticket and wake its waiter.
    Store,
}

/// The shared part of a queued request.
pub(crate) struct TicketInner {
    id: u64,
    queued_at: u64,
    pub(crate) state: Mutex<TicketState>,
}

pub(crate) struct TicketState {
    pub(crate) phase: Phase,
    pub(crate) outcome: Option<Result<Bounce>>,
    pub(crate) waker: Option<Waker>,
    #[cfg(feature = "std")]
    thread: Option<std::thread::Thread>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Queued,
    Completed,
    Cancelled,
}

/// How a queued request tries one pool: the bounce of the original
/// request, made later, possibly on another thread.
pub(crate) type Attempt<P> = Box<dyn FnMut(&Pool<P>) -> Result<Bounce> + Send>;

/// A queued request: how to try it, and whom to tell.
pub(crate) struct Entry<P: Policy> {
    ticket: Arc<TicketInner>,
    attempt: Attempt<P>,
    /// The original, copied into the slots once they are allocated.
    src: SendPtr,
    size: usize,
    sink: Sink,
}

/// A deferred request in the queue, to cancel it with
/// [`IoTlb::cancel`].
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

/// What [`IoTlb::bounce_deferred_raw`] did.
#[derive(Debug)]
pub enum Deferral {
    /// Mapped at once; the callback was dropped uncalled.
    Now(Bounce),
    /// Queued: the callback runs once, when slots free up, unless the
    /// ticket is cancelled first.
    Queued(Ticket),
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
pub(crate) struct SendPtr(pub(crate) *mut u8);

// SAFETY: the pointer is only dereferenced by the bounce copy of the
// request it belongs to, under the raw API's contract that the memory
// stays valid and unaliased until the request completes or is cancelled;
// which thread makes that copy does not matter.
unsafe impl Send for SendPtr {}

/// What [`IoTlb::now_or_queue`] did.
pub(crate) enum Now<P: Policy> {
    /// Mapped at once.
    Done(Found<P>),
    /// Queued: the sink hears of it.
    Queued(Arc<TicketInner>),
}

/// The queue of a tlb.
pub(crate) struct Queue<P: Policy> {
    pub(crate) entries: Mutex<VecDeque<Entry<P>>>,
    /// Length of `entries`, read without its lock on every unmap.
    pub(crate) queued: AtomicUsize,
    next_ticket: AtomicU64,
}

impl<P: Policy> Queue<P> {
    pub(crate) fn new() -> Self {
        Self {
            entries: Mutex::new(VecDeque::new()),
            queued: AtomicUsize::new(0),
            next_ticket: AtomicU64::new(0),
        }
    }
}

/// Counters of the queue.
#[derive(Default)]
pub(crate) struct QueueCounters {
    pub(crate) deferred: AtomicU64,
    pub(crate) deferred_ns: AtomicU64,
    pub(crate) max_wait_ns: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) callback_panics: AtomicU64,
}

impl<P: Policy> IoTlb<P> {
    /// Queues `attempt` (the allocation of a bounce of `size` bytes from
    /// `src`) and returns its ticket; the request may complete before
    /// this returns.
    ///
    /// # Safety
    /// `src` is valid for reads of `size` bytes and unaliased until the
    /// request completes or is cancelled.
    pub(crate) unsafe fn enqueue(
        &self,
        attempt: Attempt<P>,
        src: SendPtr,
        size: usize,
        sink: Sink,
        waker: Option<Waker>,
    ) -> Arc<TicketInner> {
        let ticket = Arc::new(TicketInner {
            id: self.queue.next_ticket.fetch_add(1, Ordering::Relaxed),
            queued_at: self.clock.now_ns(),
            state: Mutex::new(TicketState {
                phase: Phase::Queued,
                outcome: None,
                waker,
                #[cfg(feature = "std")]
                thread: None,
            }),
        });
        self.qcounters.deferred.fetch_add(1, Ordering::Relaxed);
        {
            let mut q = self.queue.entries.lock();
            q.push_back(Entry {
                ticket: ticket.clone(),
                attempt,
                src,
                size,
                sink,
            });
            self.queue.queued.store(q.len(), Ordering::SeqCst);
        }
        // Slots freed between the caller's failed try and the store above
        // saw an empty queue and woke nobody: try again now.
        self.service();
        ticket
    }

    /// Bounces now if nothing is queued and a pool has room, else queues
    /// the request (asking for a background growth) with `sink` to hear
    /// of it: the one "try now, else queue" of deferred maps and futures.
    ///
    /// # Errors
    /// Only errors that waiting cannot mend, at once.
    ///
    /// # Safety
    /// As [`Pool::bounce_raw`], with `cpu` valid from this call until the
    /// request is unmapped, or cancelled before it completes.
    #[expect(clippy::too_many_arguments, reason = "one request and whom to tell")]
    pub(crate) unsafe fn now_or_queue<T: Translate + Clone + Send + Sync + 'static>(
        &self,
        dev: &Device<T>,
        orig: PhysAddr,
        cpu: *mut u8,
        size: usize,
        opts: MapOptions,
        sink: Sink,
        waker: Option<Waker>,
    ) -> Result<Now<P>> {
        if self.queue.queued.load(Ordering::Acquire) == 0 {
            let mut attempt = |pool: &Pool<P>| pool.bounce_alloc(dev, orig, cpu, size, opts);
            // SAFETY: `cpu` is valid for reads of `size` bytes and
            // unreferenced (this function's contract), and `attempt`
            // allocates for exactly `cpu` and `size`.
            match unsafe { self.try_pools_copy(&mut attempt, cpu, size) } {
                Ok(found) => return Ok(Now::Done(found)),
                Err(e) if is_full(&e) => {}
                Err(e) => {
                    self.count_failure(&e);
                    return Err(e);
                }
            }
        }
        self.want_growth();
        let device = dev.clone();
        let src = SendPtr(cpu);
        let attempt = Box::new(move |pool: &Pool<P>| {
            let cpu = src;
            pool.bounce_alloc(&device, orig, cpu.0, size, opts)
        });
        // SAFETY: `cpu` stays valid for reads of `size` bytes and
        // unaliased until the request completes or is cancelled (this
        // function's contract).
        let ticket = unsafe { self.enqueue(attempt, src, size, sink, waker) };
        Ok(Now::Queued(ticket))
    }

    /// Completes queued requests in order while the head fits. Called
    /// after every unmap while the queue is not empty, after every growth,
    /// and after every enqueue.
    pub(crate) fn service(&self) {
        // One request at a time: slots are granted in queue order under
        // the queue lock, and each outcome is delivered with no lock held,
        // before the next is popped, so a callback that panics leaves the
        // rest queued rather than holding slots nobody will be told of.
        loop {
            let (entry, r) = {
                let mut q = self.queue.entries.lock();
                let Some(head) = q.front_mut() else { return };
                let r = match self.try_pools(&mut *head.attempt) {
                    Ok(found) => Ok(found),
                    Err(e) if is_full(&e) => return,
                    Err(e) => Err(e),
                };
                let Some(entry) = q.pop_front() else { return };
                self.queue.queued.store(q.len(), Ordering::SeqCst);
                (entry, r)
            };
            let waited = self.clock.now_ns().saturating_sub(entry.ticket.queued_at);
            self.qcounters
                .deferred_ns
                .fetch_add(waited, Ordering::Relaxed);
            self.qcounters
                .max_wait_ns
                .fetch_max(waited, Ordering::Relaxed);
            let r = r.map(|(b, pool, _): Found<P>| {
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
                self.qcounters
                    .callback_panics
                    .fetch_add(1, Ordering::Relaxed);
                // Its slots would be lost with it: give them back (no
                // copy-back: the original may be gone with the panic).
                if let Some(b) = granted {
                    self.give_back(&b);
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
            self.qcounters.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        cancelled
    }

    pub(crate) fn cancel_inner(&self, ticket: &Arc<TicketInner>) -> bool {
        let entry = {
            let mut q = self.queue.entries.lock();
            let Some(at) = q.iter().position(|e| Arc::ptr_eq(&e.ticket, ticket)) else {
                return false;
            };
            let e = q.remove(at);
            self.queue.queued.store(q.len(), Ordering::SeqCst);
            e
        };
        ticket.state.lock().phase = Phase::Cancelled;
        // The callback (and what it owns) is dropped outside the lock.
        drop(entry);
        // A cancelled head may have been what held the queue back.
        if self.queue.queued.load(Ordering::Acquire) > 0 {
            self.service();
        }
        true
    }

    /// Waits in the queue for `attempt` to succeed, up to the timeout.
    ///
    /// # Safety
    /// As [`IoTlb::enqueue`].
    #[cfg(all(feature = "std", not(swiotlb_loom)))]
    pub(crate) unsafe fn wait(
        &self,
        attempt: Attempt<P>,
        src: SendPtr,
        size: usize,
    ) -> Result<Found<P>> {
        let began = std::time::Instant::now();
        let timeout = std::time::Duration::from_nanos(self.wait_timeout);
        // SAFETY: `src` is valid for reads of `size` bytes and unaliased
        // until the request completes or is cancelled: this function's
        // contract, which `enqueue` asks for.
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
                    return r.and_then(|b| self.pool_of(b.phys).map(|(p, held)| (b, p, held)));
                }
            }
            let waited = began.elapsed();
            if waited >= timeout {
                if self.cancel_inner(&ticket) {
                    self.qcounters.timeouts.fetch_add(1, Ordering::Relaxed);
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
    /// is still served in order, and [`TlbStats::callback_panics`](super::TlbStats::callback_panics) counts
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
    /// request is unmapped, or cancelled with [`IoTlb::cancel`] returning
    /// `true`.
    #[cfg_attr(feature = "checker", track_caller)]
    pub unsafe fn bounce_deferred_raw<T: Translate + Clone + Send + Sync + 'static>(
        &self,
        dev: &Device<T>,
        orig: PhysAddr,
        cpu: *mut u8,
        size: usize,
        opts: MapOptions,
        done: impl FnOnce(Result<Bounce>) + Send + 'static,
    ) -> Result<Deferral> {
        #[cfg(feature = "checker")]
        let caller = core::panic::Location::caller();
        // The checker records a queued request when it completes, before
        // its callback runs (and may unmap it). The device's clone keeps
        // its identity alive until then. No guard bytes: the tlb is not
        // at hand where the request completes; no original is read, as
        // for any bounce (no direction).
        #[cfg(feature = "checker")]
        let done = {
            let dev = dev.clone();
            move |r: Result<Bounce>| {
                if let Ok(b) = &r {
                    let at = crate::checker::At {
                        dev: dev.checker_id(),
                        dma: b.dma,
                        size,
                        caller,
                    };
                    // Nor its bytes' CPU address: the pool dropped with
                    // it live is known by the physical one.
                    let placed = crate::checker::Placement {
                        slot: None,
                        phys: Some(b.phys.0),
                        guarded: false,
                    };
                    let kind = crate::checker::MapKind::Single;
                    let cpu = core::ptr::null_mut();
                    // SAFETY: a record without a direction reads no
                    // original.
                    unsafe { crate::checker::mapped(&at, cpu, None, kind, 1, placed) };
                }
                // A callback that panics (caught by the tlb, under `std`)
                // has its slots given back unmapped: forget the record.
                struct Forget(Option<(usize, crate::addr::DmaAddr)>);
                impl Drop for Forget {
                    fn drop(&mut self) {
                        if let Some((dev, dma)) = self.0 {
                            crate::checker::released(dev, dma);
                        }
                    }
                }
                let mut forget = Forget(r.as_ref().ok().map(|b| (dev.checker_id(), b.dma)));
                done(r);
                forget.0 = None;
            }
        };
        let sink = Sink::Callback(Box::new(done));
        // SAFETY: `cpu` is valid for reads and writes of `size` bytes,
        // unreferenced, from this call until the request is unmapped or
        // cancelled, and `orig` is its physical address (this function's
        // contract).
        let ticket = match unsafe { self.now_or_queue(dev, orig, cpu, size, opts, sink, None) }? {
            Now::Done((b, _, _)) => {
                #[cfg(feature = "checker")]
                {
                    // SAFETY: `cpu` is valid for reads of `size` bytes
                    // (this function's contract).
                    unsafe {
                        self.hook(dev, caller)
                            .mapped(b.dma, cpu, size, None, MapKind::Single, 1)
                    };
                }
                return Ok(Deferral::Now(b));
            }
            Now::Queued(ticket) => ticket,
        };
        Ok(Deferral::Queued(Ticket(ticket)))
    }
}

impl<P: Policy> Drop for IoTlb<P> {
    /// Requests still queued complete with [`Error::TlbGone`]: a callback
    /// runs exactly once even when its tlb goes away first (and one that
    /// panics does not stop the others: see [`IoTlb::bounce_deferred_raw`]).
    fn drop(&mut self) {
        let pending: Vec<Entry<P>> = self.queue.entries.lock().drain(..).collect();
        for entry in pending {
            self.complete(entry, Err(Error::TlbGone));
        }
    }
}
