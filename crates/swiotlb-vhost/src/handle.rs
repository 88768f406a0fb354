//! [`DeviceHandle`]: what a user holds of a device once the transport is
//! lent to a driver (virtio-drivers' devices own their transport).

use std::io;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use swiotlb_host::{RegionInfo, RegionListener};
use vhost::vhost_user::VhostUserFrontend;

use crate::error::TransportError;
use crate::transport::{bump, lock, region_message, Counters, Shared};

/// How a device given up on was reset ([`DeviceHandle::reset`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reset {
    /// Every ring was stopped and the device answered `GET_VRING_BASE`
    /// for each: it processes none of them any more.
    RingsStopped,
    /// The device did not answer, or had already failed: the connection
    /// was shut down, which ends a vhost-user backend's rings and memory
    /// table. (A process that ignores that keeps its mapping of the pool
    /// until it exits; it never had more than the pool.)
    Disconnected,
}

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::RingsStopped => "every ring stopped by GET_VRING_BASE",
            Self::Disconnected => "the connection shut down",
        })
    }
}

/// What happened to a device, in order: a test can tell that a reset came
/// before any request was handed back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A ring stopped (`GET_VRING_BASE` answered).
    RingStopped {
        /// The queue.
        queue: u16,
    },
    /// The device was reset.
    Reset {
        /// How.
        how: Reset,
    },
    /// A request in flight was handed back to the driver after the reset.
    Retired {
        /// The queue.
        queue: u16,
        /// The request's token (its first descriptor).
        token: u16,
    },
}

/// A used-ring entry whose length was larger than the bytes the device
/// could write: the device lied. Nothing is copied past a mapping for it
/// (unshare copies the mapping's own length), but it is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UsedLenTooLarge {
    /// The queue.
    pub queue: u16,
    /// The request's token.
    pub token: u16,
    /// The length the device reported.
    pub used_len: u32,
    /// The device-writable bytes of the request's chain.
    pub writable: u32,
}

impl std::fmt::Display for UsedLenTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "vhost-user device: queue {} request {} used length {} is larger than its {} device-writable bytes",
            self.queue, self.token, self.used_len, self.writable
        )
    }
}

/// Reports of lengths too large kept per device; the counter counts them
/// all.
const USED_LEN_REPORTS: usize = 64;

/// A cloneable handle on a vhost-user device: wait for used buffers, grow
/// and shrink its memory table, see its table, counters and failure.
///
/// As a [`RegionListener`] (subscribe it to the tlb's
/// [`MemfdProvider`](swiotlb_host::MemfdProvider)) it adds every new pool
/// to the device (`ADD_MEM_REG`) before any address in it is handed out,
/// and removes a pool (`REM_MEM_REG`) before its memory goes. That needs
/// the `CONFIGURE_MEM_SLOTS` protocol feature: a device without it refuses
/// every region, so its tlb cannot grow (a device without the feature
/// makes its tlb fixed).
#[derive(Clone)]
pub struct DeviceHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DeviceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceHandle")
            .field("socket", &self.shared.socket)
            .field("regions", &self.regions().len())
            .field("failure", &self.shared.failure())
            .finish()
    }
}

impl DeviceHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The device's socket.
    pub fn socket(&self) -> &std::path::Path {
        &self.shared.socket
    }

    /// Blocks until the device signals a used buffer on `queue` (its call
    /// eventfd), the device hangs up, or `timeout` passes. True if it
    /// signalled. A driver loop checks `peek_used` first, then waits:
    /// one signal may stand for several used buffers. False at once for a
    /// queue that is not set up.
    pub fn wait_used(&self, queue: u16, timeout: Duration) -> bool {
        let Some(call) = self
            .shared
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&queue)
            .cloned()
        else {
            return false;
        };
        // A timeout too long to add is no deadline at all.
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if call.read().is_ok() {
                bump(&self.shared.counters.calls);
                return true;
            }
            if self.shared.check_hangup() {
                return false;
            }
            let left = deadline.map_or(Duration::MAX, |d| {
                d.saturating_duration_since(Instant::now())
            });
            if left.is_zero() {
                return false;
            }
            // Wake at least every 50 ms to look at the socket too.
            let slice = left.min(Duration::from_millis(50));
            let ts = Timespec {
                tv_sec: slice.as_secs() as i64,
                tv_nsec: i64::from(slice.subsec_nanos()),
            };
            // SAFETY: `call` is an open eventfd owned by the `Arc` held
            // for this whole function, so the descriptor stays valid
            // while borrowed.
            let fd = unsafe {
                std::os::fd::BorrowedFd::borrow_raw(std::os::fd::AsRawFd::as_raw_fd(&*call))
            };
            let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
            // An interrupted or failed poll just loops to the deadline.
            let _ = rustix::event::poll(&mut fds, Some(&ts));
        }
    }

    /// [`wait_used`](Self::wait_used), saying why it returned: for
    /// [`blk::run`](crate::blk::run), which must tell a device that went
    /// away from one that is only slow.
    /// A queue that is not set up answers [`Gone`](crate::blk::Waited::Gone)
    /// at once: nothing will ever be signalled on it.
    pub fn wait(&self, queue: u16, timeout: Duration) -> crate::blk::Waited {
        let known = self
            .shared
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&queue);
        if !known {
            return crate::blk::Waited::Gone;
        }
        if self.wait_used(queue, timeout) {
            crate::blk::Waited::Signalled
        } else if self.shared.check_hangup() {
            crate::blk::Waited::Gone
        } else {
            crate::blk::Waited::TimedOut
        }
    }

    /// The memory table the device holds, in the order it was given.
    pub fn regions(&self) -> Vec<RegionInfo> {
        self.shared
            .regions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// What the transport did so far.
    pub fn counters(&self) -> Counters {
        self.shared.counters.snapshot()
    }

    /// Resets the device, given up on because of `why`: stops every ring
    /// (`GET_VRING_BASE`, after which a vhost-user backend no longer
    /// processes it), or shuts the connection down when the device does
    /// not answer or has already failed. The reset is latched as the
    /// device's failure: nothing more is sent to it. Only after it may the
    /// requests in flight be handed back ([`retire`](Self::retire)) and
    /// their mappings go. A second call returns the first's answer.
    pub fn reset(&self, why: &str) -> Reset {
        self.shared.reset(why)
    }

    /// How the device was reset, if it was.
    pub fn reset_state(&self) -> Option<Reset> {
        *lock(&self.shared.reset)
    }

    /// Resets and hand-backs so far, in order.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.shared.events).clone()
    }

    /// The first used lengths found too large (at most 64; the counter
    /// [`Counters::used_len_too_large`] counts them all).
    pub fn used_len_reports(&self) -> Vec<UsedLenTooLarge> {
        lock(&self.shared.used_len_reports).clone()
    }

    /// Starts checking the used entries of `queue` from the next one the
    /// device publishes: the driver has taken every entry so far, with
    /// nothing of its in flight (a block driver's blocking calls take
    /// entries unchecked, so [`blk::run`](crate::blk::run) starts here).
    ///
    /// # Safety
    /// The driver of `queue` is alive (its rings not freed).
    pub unsafe fn sync_used(&self, queue: u16) {
        let mut used = lock(&self.shared.used);
        if let Some(ring) = used.get_mut(&queue) {
            // SAFETY: the ring is alive (the caller's obligation).
            ring.seen = unsafe { used_idx(ring.addr) };
        }
    }

    /// Checks the next used entry of `queue` the driver is about to take,
    /// the request `token` whose chain has `writable` device-writable
    /// bytes: a used length larger than that is counted and reported
    /// ([`used_len_reports`](Self::used_len_reports)). Returns the
    /// report, if any. Call it once per completion, in order, before the
    /// driver takes it.
    ///
    /// # Safety
    /// The driver of `queue` is alive: its rings, given to `queue_set`,
    /// are not freed.
    pub unsafe fn check_used(
        &self,
        queue: u16,
        token: u16,
        writable: u32,
    ) -> Option<UsedLenTooLarge> {
        let mut used = lock(&self.shared.used);
        let ring = used.get_mut(&queue)?;
        let slot = usize::from(ring.seen % ring.size);
        // SAFETY: the ring lies at `ring.addr` in this process (translated
        // through the memory table when it was set), and the caller
        // guarantees the driver has not freed it.
        let (_id, len) = unsafe { used_entry(ring.addr, slot) };
        ring.seen = ring.seen.wrapping_add(1);
        if len <= writable {
            return None;
        }
        let report = UsedLenTooLarge {
            queue,
            token,
            used_len: len,
            writable,
        };
        bump(&self.shared.counters.used_len_too_large);
        let mut reports = lock(&self.shared.used_len_reports);
        if reports.len() < USED_LEN_REPORTS {
            reports.push(report);
        }
        Some(report)
    }

    /// Hands the requests `tokens` of `queue`, in flight when the device
    /// was reset, back to the driver: puts each on the used ring with
    /// length 0, where the driver's `pop_used` (through a block driver's
    /// `complete_*` call) takes it, recycles its descriptors and unshares
    /// its buffers. The device no longer runs the ring, so this process
    /// now plays its part. Writes from the next entry the driver has not
    /// taken, over anything a device left there. False (nothing done)
    /// before a [`reset`](Self::reset), or for a queue not set up.
    ///
    /// # Safety
    /// The driver of `queue` is alive (its rings not freed), has taken
    /// every used entry checked with [`check_used`](Self::check_used) and
    /// no other, and `tokens` are the first descriptors of requests it
    /// has in flight, each once.
    pub unsafe fn retire(&self, queue: u16, tokens: &[u16]) -> bool {
        if self.reset_state().is_none() {
            return false;
        }
        let mut used = lock(&self.shared.used);
        let Some(ring) = used.get_mut(&queue) else {
            return false;
        };
        let mut events = lock(&self.shared.events);
        for &token in tokens {
            let slot = usize::from(ring.seen % ring.size);
            // SAFETY: as for `used_entry`: the ring is the driver's, alive
            // (the caller's obligation); the device no longer runs it.
            unsafe { put_used_entry(ring.addr, slot, token) };
            ring.seen = ring.seen.wrapping_add(1);
            events.push(Event::Retired { queue, token });
            bump(&self.shared.counters.retired);
        }
        // SAFETY: as above.
        unsafe { publish_used_idx(ring.addr, ring.seen) };
        true
    }

    /// Memory slots of the device; `None` without `CONFIGURE_MEM_SLOTS`.
    pub fn mem_slots(&self) -> Option<u64> {
        self.shared.mem_slots
    }

    /// The latched failure, if the device failed (the driver sees
    /// `DEVICE_NEEDS_RESET`). Looks for a hang-up first.
    pub fn failure(&self) -> Option<TransportError> {
        self.shared.check_hangup();
        self.shared.failed_error()
    }

    /// Adds `region` to the device's memory table (`ADD_MEM_REG`) and to
    /// the transport's, so rings and buffers may lie in it. A region
    /// already in the table is taken as it is.
    ///
    /// # Errors
    /// [`TransportError::MissingFeature`] for a device without
    /// `CONFIGURE_MEM_SLOTS` (its memory table is fixed);
    /// [`TransportError::MemoryTable`] when every slot is taken; what the
    /// request returned.
    pub fn add_region(&self, region: &RegionInfo) -> Result<(), TransportError> {
        let sh = &self.shared;
        if let Some(e) = sh.failed_error() {
            return Err(e);
        }
        let Some(slots) = sh.mem_slots else {
            return Err(TransportError::MissingFeature {
                socket: sh.socket.clone(),
                step: "ADD_MEM_REG",
                feature: "VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS (its memory table is fixed, so its tlb cannot grow)",
            });
        };
        let table = self.regions();
        if table.contains(region) {
            // Already in the table (given to `connect`, then subscribed to
            // the provider that holds it): nothing to send.
            return Ok(());
        }
        let bad = |why| TransportError::BadRegion {
            socket: sh.socket.clone(),
            step: "ADD_MEM_REG",
            dma: region.dma,
            len: region.len,
            why,
        };
        let Some(range) = region.range().filter(|r| !r.is_empty()) else {
            return Err(bad(if region.len == 0 {
                "it is empty"
            } else {
                "it wraps past the top of the address space"
            }));
        };
        if table
            .iter()
            .filter_map(RegionInfo::range)
            .any(|t| t.start < range.end && range.start < t.end)
        {
            return Err(bad("it overlaps a region the device holds"));
        }
        let held = table.len();
        if held as u64 >= slots {
            return Err(TransportError::MemoryTable {
                socket: sh.socket.clone(),
                regions: held + 1,
                slots,
            });
        }
        let msg = region_message(region);
        sh.request("ADD_MEM_REG", |fe| fe.add_mem_region(&msg).map(drop))?;
        sh.memory_barrier("ADD_MEM_REG")?;
        sh.regions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(region.clone());
        bump(&sh.counters.regions_added);
        Ok(())
    }

    /// Removes `region` from the device's memory table (`REM_MEM_REG`)
    /// and from the transport's. Nothing of it may be in use.
    ///
    /// # Errors
    /// [`TransportError::BadRegion`] for a region not in the table
    /// (nothing is sent); otherwise as [`add_region`](Self::add_region),
    /// and the region is forgotten here even then, as its memory is about
    /// to go.
    pub fn remove_region(&self, region: &RegionInfo) -> Result<(), TransportError> {
        let sh = &self.shared;
        {
            let mut table = sh.regions.lock().unwrap_or_else(PoisonError::into_inner);
            let before = table.len();
            table.retain(|r| r != region);
            if table.len() == before {
                return Err(TransportError::BadRegion {
                    socket: sh.socket.clone(),
                    step: "REM_MEM_REG",
                    dma: region.dma,
                    len: region.len,
                    why: "the device does not hold it",
                });
            }
        }
        if let Some(e) = sh.failed_error() {
            return Err(e);
        }
        if sh.mem_slots.is_none() {
            return Err(TransportError::MissingFeature {
                socket: sh.socket.clone(),
                step: "REM_MEM_REG",
                feature: "VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS",
            });
        }
        let msg = region_message(region);
        sh.request("REM_MEM_REG", |fe| fe.remove_mem_region(&msg))?;
        sh.memory_barrier("REM_MEM_REG")?;
        bump(&sh.counters.regions_removed);
        Ok(())
    }
}

impl RegionListener for DeviceHandle {
    fn region_added(&self, region: &RegionInfo) -> io::Result<()> {
        self.add_region(region).map_err(io::Error::from)
    }

    fn region_removed(&self, region: &RegionInfo) {
        // The memory goes whatever the device says; a failure is latched
        // (the device needs a reset) if it broke the socket.
        let _ = self.remove_region(region);
    }
}

// The split used ring (VIRTIO 1.2 §2.7.8): `flags: u16`, `idx: u16`, then
// `ring[size]` of `{ id: u32, len: u32 }`, 4-byte aligned.

/// The entry at `slot` of the used ring at `addr`: its id and length.
///
/// # Safety
/// `addr` is the address, in this process, of a live used ring of more
/// than `slot` entries.
unsafe fn used_entry(addr: u64, slot: usize) -> (u32, u32) {
    let at = addr as usize + 4 + 8 * slot;
    let id = std::ptr::with_exposed_provenance::<AtomicU32>(at);
    let len = std::ptr::with_exposed_provenance::<AtomicU32>(at + 4);
    // SAFETY: `id` lies in the live, 4-aligned ring (the caller's
    // obligation); the device may write it concurrently, hence atomic.
    let id = unsafe { &*id }.load(Ordering::Acquire);
    // SAFETY: as for `id`, four bytes further.
    let len = unsafe { &*len }.load(Ordering::Acquire);
    (id, len)
}

/// Writes `token` with length 0 at `slot` of the used ring at `addr`.
///
/// # Safety
/// As [`used_entry`].
unsafe fn put_used_entry(addr: u64, slot: usize, token: u16) {
    let at = addr as usize + 4 + 8 * slot;
    let id = std::ptr::with_exposed_provenance::<AtomicU32>(at);
    let len = std::ptr::with_exposed_provenance::<AtomicU32>(at + 4);
    // SAFETY: `id` lies in the live, 4-aligned ring (the caller's
    // obligation); the driver reads it atomically.
    unsafe { &*id }.store(u32::from(token), Ordering::Relaxed);
    // SAFETY: as for `id`, four bytes further.
    unsafe { &*len }.store(0, Ordering::Relaxed);
}

/// The used ring's index.
///
/// # Safety
/// `addr` is the address, in this process, of a live used ring.
unsafe fn used_idx(addr: u64) -> u16 {
    let p = std::ptr::with_exposed_provenance::<AtomicU16>(addr as usize + 2);
    // SAFETY: the index lies in the live, 2-aligned ring (the caller's
    // obligation); the device writes it concurrently, hence atomic.
    unsafe { &*p }.load(Ordering::Acquire)
}

/// Publishes `idx` as the used ring's index, after its entries (release).
///
/// # Safety
/// `addr` is the address, in this process, of a live used ring.
unsafe fn publish_used_idx(addr: u64, idx: u16) {
    let p = std::ptr::with_exposed_provenance::<AtomicU16>(addr as usize + 2);
    // SAFETY: the index lies in the live, 2-aligned ring (the caller's
    // obligation); the driver reads it with acquire.
    unsafe { &*p }.store(idx, Ordering::Release);
}
