//! [`DeviceHandle`]: what a user holds of a device once the transport is
//! lent to a driver (virtio-drivers' devices own their transport).

use std::io;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use swiotlb_host::{RegionInfo, RegionListener};
use vhost::vhost_user::VhostUserFrontend;

use crate::error::TransportError;
use crate::transport::{bump, region_message, Counters, Shared};

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
