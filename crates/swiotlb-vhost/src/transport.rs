//! [`VhostUserTransport`]: virtio-drivers' [`Transport`] over a vhost-user
//! socket, this process being the frontend (the "VMM").

use std::collections::BTreeMap;
use std::io;
use std::os::fd::AsRawFd as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use swiotlb_host::RegionInfo;
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::PhysAddr;
use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::error::TransportError;
use crate::handle::{DeviceHandle, Event, Reset, UsedLenTooLarge};

/// `VHOST_USER_F_PROTOCOL_FEATURES`: a vhost-user bit in the virtio
/// feature word, never a virtio feature; hidden from the driver.
const F_PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
/// `VHOST_F_LOG_ALL`: dirty logging for migration; hidden from the driver.
const F_LOG_ALL: u64 = VhostUserVirtioFeatures::LOG_ALL.bits();

/// The protocol features the transport uses, when offered.
const WANTED_PROTOCOL: VhostUserProtocolFeatures = VhostUserProtocolFeatures::MQ
    .union(VhostUserProtocolFeatures::REPLY_ACK)
    .union(VhostUserProtocolFeatures::CONFIG)
    .union(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS);

/// Regions `SET_MEM_TABLE` carries at most (`VHOST_MEMORY_BASELINE_NREGIONS`
/// of the vhost-user spec); more go in by `ADD_MEM_REG`.
const MEM_TABLE_REGIONS: usize = 8;

/// Bytes of virtio-blk config space that vhost-user-blk backends answer
/// for: QEMU's `struct virtio_blk_config` up to `write_zeroes_may_unmap`
/// and its padding (qemu-storage-daemon refuses a longer `GET_CONFIG`).
pub const BLK_CONFIG_LEN: usize = 60;

/// The config-space length `connect` assumes for a device type: what its
/// vhost-user backends answer `GET_CONFIG` for. Zero where not known; give
/// it to [`VhostUserTransport::connect_with_config_len`].
pub fn default_config_len(device_type: DeviceType) -> usize {
    match device_type {
        DeviceType::Block => BLK_CONFIG_LEN,
        _ => 0,
    }
}

/// Counters of what the transport did, for tests and demos.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counters {
    /// Kicks written (`notify`).
    pub kicks: u64,
    /// Calls consumed (`wait_used` woken, `ack_interrupt` seeing one).
    pub calls: u64,
    /// `GET_CONFIG` requests.
    pub config_reads: u64,
    /// Rings started (`SET_VRING_*` ... `SET_VRING_ENABLE`).
    pub rings_started: u64,
    /// Rings stopped (`GET_VRING_BASE`).
    pub rings_stopped: u64,
    /// Regions added after connecting (`ADD_MEM_REG`).
    pub regions_added: u64,
    /// Regions removed (`REM_MEM_REG`).
    pub regions_removed: u64,
    /// Resets of a device given up on ([`DeviceHandle::reset`]).
    pub resets: u64,
    /// Requests in flight handed back to the driver after a reset
    /// ([`DeviceHandle::retire`]).
    pub retired: u64,
    /// Used-ring entries whose length was larger than the chain's
    /// device-writable bytes ([`DeviceHandle::check_used`]).
    pub used_len_too_large: u64,
}

#[derive(Default)]
pub(crate) struct AtomicCounters {
    pub(crate) kicks: AtomicU64,
    pub(crate) calls: AtomicU64,
    pub(crate) config_reads: AtomicU64,
    pub(crate) rings_started: AtomicU64,
    pub(crate) rings_stopped: AtomicU64,
    pub(crate) regions_added: AtomicU64,
    pub(crate) regions_removed: AtomicU64,
    pub(crate) resets: AtomicU64,
    pub(crate) retired: AtomicU64,
    pub(crate) used_len_too_large: AtomicU64,
}

impl AtomicCounters {
    pub(crate) fn snapshot(&self) -> Counters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counters {
            kicks: get(&self.kicks),
            calls: get(&self.calls),
            config_reads: get(&self.config_reads),
            rings_started: get(&self.rings_started),
            rings_stopped: get(&self.rings_stopped),
            regions_added: get(&self.regions_added),
            regions_removed: get(&self.regions_removed),
            resets: get(&self.resets),
            retired: get(&self.retired),
            used_len_too_large: get(&self.used_len_too_large),
        }
    }
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The first failure, latched.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub(crate) step: &'static str,
    pub(crate) reason: String,
}

/// What the transport and its handles share.
pub(crate) struct Shared {
    pub(crate) socket: PathBuf,
    /// The frontend (itself an `Arc<Mutex<..>>`); every request goes
    /// through [`Shared::request`], under `io`.
    frontend: Frontend,
    /// A second descriptor of the socket, to see the device hang up.
    watch: UnixStream,
    /// Bounds every request (see [`Watchdog`]).
    watchdog: Arc<Watchdog>,
    watchdog_thread: Mutex<Option<JoinHandle<()>>>,
    /// How long a request may take.
    timeout: Duration,
    /// Serialises requests, and the hang-up check with them (a reply
    /// waiting to be read must not look like the device talking out of
    /// turn).
    io: Mutex<()>,
    /// The first failure; once set, nothing more is sent.
    failure: Mutex<Option<Failure>>,
    /// The memory table the device holds, in the order it was given.
    pub(crate) regions: Mutex<Vec<RegionInfo>>,
    /// Call eventfds of the running rings, for waiters.
    pub(crate) calls: Mutex<BTreeMap<u16, Arc<EventFd>>>,
    /// Memory slots of the device, when it offers `CONFIGURE_MEM_SLOTS`.
    pub(crate) mem_slots: Option<u64>,
    /// Whether the device acks every request (`REPLY_ACK`).
    reply_ack: bool,
    pub(crate) counters: AtomicCounters,
    /// Whether rings are enabled and disabled with `SET_VRING_ENABLE`
    /// (protocol features negotiated).
    enable_rings: bool,
    /// The used ring of every ring set up, for the checks and the
    /// hand-back after a reset; kept after a reset, until the driver
    /// unsets the queue.
    pub(crate) used: Mutex<BTreeMap<u16, UsedRing>>,
    /// How the device was reset, once it was.
    pub(crate) reset: Mutex<Option<Reset>>,
    /// Resets and hand-backs, in order.
    pub(crate) events: Mutex<Vec<Event>>,
    /// The first used lengths found too large.
    pub(crate) used_len_reports: Mutex<Vec<UsedLenTooLarge>>,
}

/// Where a ring's used ring lies, in this process.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UsedRing {
    /// Address of the device area (flags, idx, ring) in this process.
    pub(crate) addr: u64,
    /// Entries.
    pub(crate) size: u16,
    /// The next entry to check: the driver's own cursor, as long as every
    /// completion is checked.
    pub(crate) seen: u16,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Bounds every request in time. rust-vmm's frontend blocks in
/// `recvmsg(2)` for a reply, and retries `EAGAIN` in a loop, so a socket
/// timeout would turn a wedged device into a busy loop; instead a request
/// arms this watchdog, whose thread shuts the socket down when the
/// deadline passes, which ends the blocked call with an error. The device
/// is then failed: its socket is gone.
struct Watchdog {
    state: Mutex<WatchState>,
    cv: Condvar,
}

#[derive(Default)]
struct WatchState {
    /// The deadline of the request in flight, and its name.
    armed: Option<(Instant, &'static str)>,
    /// The request the watchdog cut short.
    fired: Option<&'static str>,
    /// The transport is gone; the thread ends.
    closed: bool,
}

impl Watchdog {
    fn spawn(socket: UnixStream) -> io::Result<(Arc<Self>, JoinHandle<()>)> {
        let dog = Arc::new(Self {
            state: Mutex::new(WatchState::default()),
            cv: Condvar::new(),
        });
        let d = dog.clone();
        let thread = std::thread::Builder::new()
            .name("vhost-user-watchdog".into())
            .spawn(move || d.run(&socket))?;
        Ok((dog, thread))
    }

    fn run(&self, socket: &UnixStream) {
        let mut st = lock(&self.state);
        loop {
            if st.closed {
                return;
            }
            st = match st.armed {
                None => self.cv.wait(st).unwrap_or_else(PoisonError::into_inner),
                Some((deadline, step)) => {
                    let now = Instant::now();
                    if now >= deadline {
                        st.fired = Some(step);
                        st.armed = None;
                        let _ = socket.shutdown(std::net::Shutdown::Both);
                        st
                    } else {
                        self.cv
                            .wait_timeout(st, deadline - now)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0
                    }
                }
            };
        }
    }

    /// Arms the watchdog for `step`; a timeout too long to add to now is
    /// no deadline at all.
    fn arm(&self, step: &'static str, timeout: Duration) {
        lock(&self.state).armed = Instant::now().checked_add(timeout).map(|d| (d, step));
        self.cv.notify_one();
    }

    /// Disarms; returns the request the watchdog cut short, if any.
    fn disarm(&self) -> Option<&'static str> {
        let mut st = lock(&self.state);
        st.armed = None;
        st.fired
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.cv.notify_one();
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.watchdog.close();
        if let Some(t) = lock(&self.watchdog_thread).take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    pub(crate) fn failure(&self) -> Option<Failure> {
        lock(&self.failure).clone()
    }

    pub(crate) fn failed_error(&self) -> Option<TransportError> {
        self.failure().map(|f| TransportError::Failed {
            socket: self.socket.clone(),
            step: f.step,
            reason: f.reason,
        })
    }

    /// Latches `e` if it is fatal; returns it.
    pub(crate) fn latch(&self, step: &'static str, e: TransportError) -> TransportError {
        if e.is_fatal() {
            let mut f = lock(&self.failure);
            if f.is_none() {
                *f = Some(Failure {
                    step,
                    reason: e.to_string(),
                });
            }
        }
        e
    }

    /// One request: refused once the device failed, latched if it fails
    /// the socket.
    pub(crate) fn request<T>(
        &self,
        step: &'static str,
        f: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T, TransportError> {
        let _io = lock(&self.io);
        if let Some(e) = self.failed_error() {
            return Err(e);
        }
        let mut fe = self.frontend.clone();
        self.watchdog.arm(step, self.timeout);
        let r = f(&mut fe);
        let fired = self.watchdog.disarm();
        r.map_err(|source| {
            let e = match fired {
                Some(_) => TransportError::Timeout {
                    socket: self.socket.clone(),
                    step,
                    waited: self.timeout,
                },
                None => TransportError::Protocol {
                    socket: self.socket.clone(),
                    step,
                    source,
                },
            };
            self.latch(step, e)
        })
    }

    /// After a change of the memory table: without `REPLY_ACK` the device
    /// may still be reading the request when a kick on the (separate)
    /// eventfd makes it look at a ring, so a round trip makes sure it has
    /// taken the change (QEMU's `vhost_user_set_mem_table` does the same).
    pub(crate) fn memory_barrier(&self, step: &'static str) -> Result<(), TransportError> {
        if self.reply_ack {
            return Ok(());
        }
        self.request(step, |fe| fe.get_features().map(drop))
    }

    /// Whether the device hung up; latches it as the failure if so. Cheap
    /// (one `poll(2)` with no wait).
    pub(crate) fn check_hangup(&self) -> bool {
        let _io = lock(&self.io);
        if self.failure().is_some() {
            return true;
        }
        let mut fds = [rustix::event::PollFd::new(
            &self.watch,
            rustix::event::PollFlags::IN,
        )];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match rustix::event::poll(&mut fds, Some(&zero)) {
            Ok(n) if n > 0 => {
                let r = fds[0].revents();
                // The device sends nothing unasked on this socket, so with
                // no request in flight (we hold `io`) anything to read is
                // the end of the stream.
                if r.intersects(
                    rustix::event::PollFlags::HUP
                        | rustix::event::PollFlags::ERR
                        | rustix::event::PollFlags::IN,
                ) {
                    let mut f = lock(&self.failure);
                    if f.is_none() {
                        *f = Some(Failure {
                            step: "socket",
                            reason: "the device closed the connection".into(),
                        });
                    }
                    return true;
                }
                false
            }
            _ => false,
        }
    }

    /// Stops ring `queue` if it runs: disable, then `GET_VRING_BASE`,
    /// which makes the device stop it and let go of its eventfds (the
    /// vhost-user spec: the backend replies once it no longer processes
    /// the ring). True if it is stopped: it was not running, or the device
    /// answered.
    pub(crate) fn stop_ring(&self, queue: u16) -> bool {
        if lock(&self.calls).remove(&queue).is_none() {
            return true;
        }
        let q = usize::from(queue);
        if self.enable_rings {
            let _ = self.request("SET_VRING_ENABLE", |fe| fe.set_vring_enable(q, false));
        }
        let stopped = self
            .request("GET_VRING_BASE", |fe| fe.get_vring_base(q))
            .is_ok();
        if stopped {
            bump(&self.counters.rings_stopped);
            lock(&self.events).push(Event::RingStopped { queue });
        }
        stopped
    }

    /// Resets a device given up on (`why`): every ring stopped with
    /// `GET_VRING_BASE`, or, when the device does not answer or already
    /// failed, the connection shut down (a vhost-user backend stops its
    /// rings and unmaps the memory table when its frontend goes). Latches
    /// the reset as the device's failure: nothing more is sent. Once.
    pub(crate) fn reset(&self, why: &str) -> Reset {
        let mut done = lock(&self.reset);
        if let Some(how) = *done {
            return how;
        }
        let queues: Vec<u16> = lock(&self.calls).keys().copied().collect();
        let mut stopped = self.failure().is_none();
        for q in queues {
            stopped &= self.stop_ring(q);
        }
        lock(&self.calls).clear();
        let how = if stopped {
            Reset::RingsStopped
        } else {
            // Whatever the state of the socket, the device learns the
            // connection is over.
            let _ = self.watch.shutdown(std::net::Shutdown::Both);
            Reset::Disconnected
        };
        {
            let mut f = lock(&self.failure);
            if f.is_none() {
                *f = Some(Failure {
                    step: "reset",
                    reason: format!("reset ({how}) after {why}"),
                });
            }
        }
        bump(&self.counters.resets);
        lock(&self.events).push(Event::Reset { how });
        *done = Some(how);
        how
    }

    pub(crate) fn translate(
        &self,
        what: &'static str,
        dma: u64,
        len: u64,
    ) -> Result<u64, TransportError> {
        lock(&self.regions)
            .iter()
            .find(|r| r.contains(dma, len))
            .map(|r| r.cpu + (dma - r.dma))
            .ok_or(TransportError::OutsideRegions {
                socket: self.socket.clone(),
                what,
                dma,
                len,
            })
    }
}

pub(crate) fn region_message(r: &RegionInfo) -> VhostUserMemoryRegionInfo {
    VhostUserMemoryRegionInfo {
        guest_phys_addr: r.dma,
        memory_size: r.len,
        userspace_addr: r.cpu,
        mmap_offset: r.fd_offset,
        mmap_handle: r.fd.as_raw_fd(),
    }
}

/// One ring the device runs.
struct Ring {
    kick: EventFd,
    call: Arc<EventFd>,
}

/// A virtio-drivers [`Transport`] whose device is a vhost-user backend in
/// another process, reached over a unix socket: qemu-storage-daemon's
/// vhost-user-blk export, a rust-vmm `vhost-device-*`, ...
///
/// The driver's memory must lie in the shared regions given to
/// [`connect`](VhostUserTransport::connect) (or added later through a
/// [`DeviceHandle`]): descriptors carry their DMA addresses, which the
/// device translates through the memory table.
///
/// # Protocol
/// - The memory table (`SET_MEM_TABLE`: each region at its DMA address as
///   the guest physical address, its address here as the userspace
///   address, its memfd) is sent while connecting, before any ring.
/// - `SET_VRING_ADDR` takes addresses in the frontend's own address space,
///   which the device translates through the table's userspace addresses:
///   the DMA addresses the driver gives [`queue_set`](Transport::queue_set)
///   are mapped back through the region table; a ring outside every region
///   fails the device.
/// - `VHOST_USER_F_PROTOCOL_FEATURES` (bit 30) and `VHOST_F_LOG_ALL` (bit
///   26) are hidden from the driver; bit 30 is set again in `SET_FEATURES`
///   when protocol features were negotiated, and every ring is then
///   enabled with `SET_VRING_ENABLE` after its set-up (num, base 0, addr,
///   kick, call).
/// - The status byte is kept here (qemu-storage-daemon does not offer the
///   `STATUS` protocol feature); writing 0 stops every running ring
///   (`GET_VRING_BASE`), so the driver can start again.
/// - A device given up on (a deadline passed, it failed) is reset through
///   its [`DeviceHandle`] before the requests in flight are handed back
///   to the driver: every ring stopped (`GET_VRING_BASE`), or the
///   connection shut down when it does not answer. Only then may their
///   mappings go ([`DeviceHandle::retire`]).
/// - Config space is read with `GET_CONFIG` from offset 0 and sliced here:
///   vhost-user-blk backends answer from offset 0 whatever offset is asked
///   (and qemu-storage-daemon echoes the asked offset in its reply, so the
///   wrong bytes would pass every check).
/// - The first socket error (or a hang-up) is latched: the driver sees
///   `DEVICE_NEEDS_RESET` in [`get_status`](Transport::get_status), and
///   every later call is a no-op or an error. Every request takes at most
///   the `timeout` given to `connect`: a watchdog thread shuts the socket
///   down when it passes (rust-vmm's frontend would spin on a socket
///   timeout), which fails the device.
pub struct VhostUserTransport {
    shared: Arc<Shared>,
    device_type: DeviceType,
    queue_size: u16,
    config_len: usize,
    /// Queues the device has (`GET_QUEUE_NUM` with `MQ`, else unbounded).
    num_queues: u64,
    /// What `GET_FEATURES` said, vhost bits included.
    device_features: u64,
    protocol: VhostUserProtocolFeatures,
    status: DeviceStatus,
    rings: BTreeMap<u16, Ring>,
}

impl std::fmt::Debug for VhostUserTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserTransport")
            .field("socket", &self.shared.socket)
            .field("device_type", &self.device_type)
            .field("queue_size", &self.queue_size)
            .field(
                "device_features",
                &format_args!("{:#x}", self.device_features),
            )
            .field("protocol", &self.protocol)
            .field("status", &self.status)
            .field("rings", &self.rings.keys().collect::<Vec<_>>())
            .field("failure", &self.shared.failure())
            .finish()
    }
}

fn connect_socket(socket: &Path, timeout: Duration) -> Result<UnixStream, TransportError> {
    let start = Instant::now();
    loop {
        match UnixStream::connect(socket) {
            Ok(s) => return Ok(s),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) && start.elapsed() < timeout =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(TransportError::Connect {
                    socket: socket.to_owned(),
                    waited: start.elapsed(),
                    source,
                })
            }
        }
    }
}

impl VhostUserTransport {
    /// Connects to the vhost-user device listening on `socket` (retrying
    /// until `timeout`), negotiates, and sends it the memory table of
    /// `regions`. The device is of `device_type` and its queues hold
    /// `queue_size` entries at most: vhost-user cannot report either.
    /// `timeout` also bounds every later reply.
    ///
    /// # Errors
    /// [`TransportError::Connect`] if nothing listens on `socket` in time;
    /// [`TransportError::Protocol`] naming the request that failed;
    /// [`TransportError::MemoryTable`] for no region, or more than the
    /// device holds.
    pub fn connect(
        socket: &Path,
        device_type: DeviceType,
        queue_size: u16,
        regions: &[RegionInfo],
        timeout: Duration,
    ) -> Result<Self, TransportError> {
        Self::connect_with_config_len(
            socket,
            device_type,
            queue_size,
            regions,
            timeout,
            default_config_len(device_type),
        )
    }

    /// [`connect`](Self::connect) to a device whose config space is
    /// `config_len` bytes (what its backend answers `GET_CONFIG` for).
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    pub fn connect_with_config_len(
        socket: &Path,
        device_type: DeviceType,
        queue_size: u16,
        regions: &[RegionInfo],
        timeout: Duration,
        config_len: usize,
    ) -> Result<Self, TransportError> {
        let io_err = |step, source| TransportError::Io {
            socket: socket.to_owned(),
            step,
            source,
        };
        if regions.is_empty() {
            return Err(TransportError::MemoryTable {
                socket: socket.to_owned(),
                regions: 0,
                slots: 0,
            });
        }
        let stream = connect_socket(socket, timeout)?;
        let watch = stream
            .try_clone()
            .map_err(|e| io_err("duplicating the socket", e))?;
        // Every request is bounded by `timeout`: a wedged device fails the
        // transport instead of hanging the driver.
        let (watchdog, thread) = stream
            .try_clone()
            .and_then(Watchdog::spawn)
            .map_err(|e| io_err("starting the request watchdog", e))?;
        // Queue indices are checked against `num_queues` here, not by the
        // frontend, which learns the real count only with `MQ`.
        let frontend = Frontend::from_stream(stream, u64::from(u16::MAX));
        let mut shared = Shared {
            socket: socket.to_owned(),
            frontend,
            watch,
            watchdog,
            watchdog_thread: Mutex::new(Some(thread)),
            timeout,
            io: Mutex::new(()),
            failure: Mutex::new(None),
            regions: Mutex::new(Vec::new()),
            calls: Mutex::new(BTreeMap::new()),
            mem_slots: None,
            reply_ack: false,
            counters: AtomicCounters::default(),
            enable_rings: false,
            used: Mutex::new(BTreeMap::new()),
            reset: Mutex::new(None),
            events: Mutex::new(Vec::new()),
            used_len_reports: Mutex::new(Vec::new()),
        };

        shared.request("SET_OWNER", |fe| fe.set_owner())?;
        let device_features = shared.request("GET_FEATURES", |fe| fe.get_features())?;
        shared.enable_rings = device_features & F_PROTOCOL_FEATURES != 0;
        let mut protocol = VhostUserProtocolFeatures::empty();
        if device_features & F_PROTOCOL_FEATURES != 0 {
            let offered =
                shared.request("GET_PROTOCOL_FEATURES", |fe| fe.get_protocol_features())?;
            protocol = offered & WANTED_PROTOCOL;
            shared.request("SET_PROTOCOL_FEATURES", |fe| {
                fe.set_protocol_features(protocol)
            })?;
        }
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            // Every request is acked from now on, so a refusal shows up at
            // the request that caused it, and a table change is taken
            // before the next kick.
            shared
                .frontend
                .set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            shared.reply_ack = true;
        }
        if protocol.contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS) {
            shared.mem_slots =
                Some(shared.request("GET_MAX_MEM_SLOTS", |fe| fe.get_max_mem_slots())?);
        }
        let num_queues = if protocol.contains(VhostUserProtocolFeatures::MQ) {
            shared.request("GET_QUEUE_NUM", |fe| fe.get_queue_num())?
        } else {
            u64::from(u16::MAX)
        };

        let slots = shared.mem_slots.unwrap_or(MEM_TABLE_REGIONS as u64);
        if regions.len() as u64 > slots {
            return Err(TransportError::MemoryTable {
                socket: socket.to_owned(),
                regions: regions.len(),
                slots,
            });
        }
        // In address order: rust-vmm's backends (vm-memory) refuse a
        // table whose regions are not sorted; QEMU sends them sorted too.
        let mut regions = regions.to_vec();
        regions.sort_by_key(|r| r.dma);
        let (first, rest) = regions.split_at(regions.len().min(MEM_TABLE_REGIONS));
        let table: Vec<_> = first.iter().map(region_message).collect();
        shared.request("SET_MEM_TABLE", |fe| fe.set_mem_table(&table).map(drop))?;
        for r in rest {
            shared.request("ADD_MEM_REG", |fe| {
                fe.add_mem_region(&region_message(r)).map(drop)
            })?;
        }
        shared.memory_barrier("SET_MEM_TABLE")?;
        *lock(&shared.regions) = regions;

        Ok(Self {
            shared: Arc::new(shared),
            device_type,
            queue_size,
            config_len,
            num_queues,
            device_features,
            protocol,
            status: DeviceStatus::empty(),
            rings: BTreeMap::new(),
        })
    }

    /// A handle on the device that outlives lending the transport to a
    /// driver: waits for used buffers, adds and removes memory regions
    /// (as a [`swiotlb_host::RegionListener`]), reports the region table,
    /// the counters and the failure.
    pub fn handle(&self) -> DeviceHandle {
        DeviceHandle::new(self.shared.clone())
    }

    /// The protocol features negotiated with the device.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    /// The virtio feature bits the device offered, vhost-only bits
    /// included.
    pub fn raw_device_features(&self) -> u64 {
        self.device_features
    }

    /// Memory slots the device offers (`GET_MAX_MEM_SLOTS`); `None` for a
    /// device without `CONFIGURE_MEM_SLOTS`, whose memory table is fixed.
    pub fn mem_slots(&self) -> Option<u64> {
        self.shared.mem_slots
    }

    fn failed(&self) -> bool {
        self.shared.failure().is_some()
    }

    /// Sets up and starts ring `queue`.
    fn start_ring(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) -> Result<(), TransportError> {
        let sh = &self.shared;
        let size16 = u16::try_from(size).map_err(|_| {
            sh.latch(
                "SET_VRING_NUM",
                TransportError::Failed {
                    socket: sh.socket.clone(),
                    step: "SET_VRING_NUM",
                    reason: format!("queue size {size} does not fit 16 bits"),
                },
            )
        })?;
        let n = u64::from(size);
        // virtio 1.x split ring: 16-byte descriptors; the driver area is
        // flags, idx, ring[n], used_event; the device area flags, idx,
        // ring[n] of 8 bytes, avail_event.
        let trans = |what, dma, len| {
            sh.translate(what, dma, len)
                .map_err(|e| sh.latch("SET_VRING_ADDR", e))
        };
        let desc = trans("descriptors", descriptors, 16 * n)?;
        let avail = trans("driver area", driver_area, 6 + 2 * n)?;
        let used = trans("device area", device_area, 6 + 8 * n)?;
        let io_err = |step, source| TransportError::Io {
            socket: sh.socket.clone(),
            step,
            source,
        };
        let kick = EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC)
            .map_err(|e| io_err("creating a kick eventfd", e))?;
        let call = Arc::new(
            EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC)
                .map_err(|e| io_err("creating a call eventfd", e))?,
        );
        let q = usize::from(queue);
        sh.request("SET_VRING_NUM", |fe| fe.set_vring_num(q, size16))?;
        sh.request("SET_VRING_BASE", |fe| fe.set_vring_base(q, 0))?;
        let addrs = VringConfigData {
            queue_max_size: self.queue_size,
            queue_size: size16,
            flags: 0,
            desc_table_addr: desc,
            used_ring_addr: used,
            avail_ring_addr: avail,
            log_addr: None,
        };
        sh.request("SET_VRING_ADDR", |fe| fe.set_vring_addr(q, &addrs))?;
        sh.request("SET_VRING_KICK", |fe| fe.set_vring_kick(q, &kick))?;
        sh.request("SET_VRING_CALL", |fe| fe.set_vring_call(q, &call))?;
        // The ring is counted as set up from here: a reset stops it even
        // if enabling fails.
        lock(&sh.calls).insert(queue, call.clone());
        lock(&sh.used).insert(
            queue,
            UsedRing {
                addr: used,
                size: size16,
                seen: 0,
            },
        );
        self.rings.insert(queue, Ring { kick, call });
        if self.device_features & F_PROTOCOL_FEATURES != 0 {
            sh.request("SET_VRING_ENABLE", |fe| fe.set_vring_enable(q, true))?;
        }
        bump(&sh.counters.rings_started);
        Ok(())
    }

    /// Stops ring `queue` if it runs (not if a reset stopped it already),
    /// and forgets its used ring: the driver is about to free it.
    fn stop_ring(&mut self, queue: u16) {
        let Some(_ring) = self.rings.remove(&queue) else {
            return;
        };
        self.shared.stop_ring(queue);
        lock(&self.shared.used).remove(&queue);
    }

    /// The whole config space, read from offset 0.
    fn read_config(&self) -> Result<Vec<u8>, TransportError> {
        let len = self.config_len;
        let zeros = vec![0u8; len];
        bump(&self.shared.counters.config_reads);
        let (_, payload) = self.shared.request("GET_CONFIG", |fe| {
            fe.get_config(0, len as u32, VhostUserConfigFlags::empty(), &zeros)
        })?;
        Ok(payload)
    }
}

impl Transport for VhostUserTransport {
    fn device_type(&self) -> DeviceType {
        self.device_type
    }

    fn read_device_features(&mut self) -> u64 {
        self.device_features & !(F_PROTOCOL_FEATURES | F_LOG_ALL)
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        let mut features = driver_features & !(F_PROTOCOL_FEATURES | F_LOG_ALL);
        if self.device_features & F_PROTOCOL_FEATURES != 0 {
            features |= F_PROTOCOL_FEATURES;
        }
        let _ = self
            .shared
            .request("SET_FEATURES", |fe| fe.set_features(features));
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        if self.failed() || u64::from(queue) >= self.num_queues {
            0
        } else {
            u32::from(self.queue_size)
        }
    }

    fn notify(&mut self, queue: u16) {
        if self.failed() {
            return;
        }
        if let Some(ring) = self.rings.get(&queue) {
            if ring.kick.write(1).is_ok() {
                bump(&self.shared.counters.kicks);
            }
        }
    }

    fn get_status(&self) -> DeviceStatus {
        if self.shared.check_hangup() {
            self.status | DeviceStatus::DEVICE_NEEDS_RESET
        } else {
            self.status
        }
    }

    fn set_status(&mut self, status: DeviceStatus) {
        if status.is_empty() {
            // Reset: stop the rings the device runs so the driver can
            // start again from scratch.
            let queues: Vec<_> = self.rings.keys().copied().collect();
            for q in queues {
                self.stop_ring(q);
            }
        }
        self.status = status;
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {}

    fn requires_legacy_layout(&self) -> bool {
        false
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        if self.failed() {
            return;
        }
        if self.rings.contains_key(&queue) {
            self.stop_ring(queue);
        }
        // A failure is latched (the device then needs a reset); the trait
        // has no way to return it.
        let _ = self.start_ring(queue, size, descriptors, driver_area, device_area);
    }

    fn queue_unset(&mut self, queue: u16) {
        self.stop_ring(queue);
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.rings.contains_key(&queue)
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        let mut status = InterruptStatus::empty();
        for ring in self.rings.values() {
            if ring.call.read().is_ok() {
                bump(&self.shared.counters.calls);
                status |= InterruptStatus::QUEUE_INTERRUPT;
            }
        }
        status
    }

    fn read_config_generation(&self) -> u32 {
        // No config-change notifications without a backend channel: the
        // config space is one generation.
        0
    }

    fn read_config_space<T: FromBytes + IntoBytes>(
        &self,
        offset: usize,
    ) -> virtio_drivers::Result<T> {
        if self.config_len == 0 {
            return Err(virtio_drivers::Error::ConfigSpaceMissing);
        }
        let end = offset
            .checked_add(size_of::<T>())
            .filter(|&end| end <= self.config_len)
            .ok_or(virtio_drivers::Error::ConfigSpaceTooSmall)?;
        let config = self
            .read_config()
            .map_err(|_| virtio_drivers::Error::IoError)?;
        config
            .get(offset..end)
            .and_then(|b| T::read_from_bytes(b).ok())
            .ok_or(virtio_drivers::Error::ConfigSpaceTooSmall)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> virtio_drivers::Result<()> {
        let end = offset
            .checked_add(size_of::<T>())
            .filter(|&end| end <= self.config_len)
            .ok_or(virtio_drivers::Error::ConfigSpaceTooSmall)?;
        let offset32 = u32::try_from(offset).map_err(|_| virtio_drivers::Error::InvalidParam)?;
        debug_assert!(end <= self.config_len);
        self.shared
            .request("SET_CONFIG", |fe| {
                fe.set_config(offset32, VhostUserConfigFlags::WRITABLE, value.as_bytes())
            })
            .map_err(|_| virtio_drivers::Error::IoError)
    }
}

impl Drop for VhostUserTransport {
    fn drop(&mut self) {
        // Stop the rings before the eventfds close and the driver's memory
        // goes; a failed device is not asked.
        let queues: Vec<_> = self.rings.keys().copied().collect();
        for q in queues {
            self.stop_ring(q);
        }
    }
}
