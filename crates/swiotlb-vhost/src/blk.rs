//! Block I/O with deadlines over the unmodified `virtio-drivers` block
//! driver: many requests in flight through its non-blocking calls, every
//! wait bounded, so a dead or silent device ends in an error instead of the
//! spin of the driver's blocking calls.
//!
//! A buffer in flight is taken apart ([`DmaBuffer::into_raw_parts`]) when
//! its request is submitted and put back together only when the device has
//! completed it: its bytes stay where the driver (and, for a buffer the
//! device reaches directly, the device) was told they are, whatever the
//! caller's buffer type. A device given up on (no completion before the
//! deadline, gone, or any other failure with requests in flight) is reset
//! first, and only then are its requests in flight taken back from the
//! ring, their mappings unmapped and their buffers returned with the error
//! ([`RunError`]); a buffer is never handed back while the device may
//! still write it (one that cannot be taken back safely is leaked).

use std::ptr::NonNull;
use std::time::{Duration, Instant};

use swiotlb::DmaBuffer;
use virtio_drivers::device::blk::{BlkReq, BlkResp, RespStatus, VirtIOBlk, SECTOR_SIZE};
use virtio_drivers::transport::Transport;
use virtio_drivers::Hal;

pub use crate::handle::Reset;

/// One block request: the buffer's bytes (a non-zero multiple of
/// [`SECTOR_SIZE`]) at `sector`, written to the device or read from it.
#[derive(Debug)]
pub struct BlockOp<B> {
    /// First sector.
    pub sector: u64,
    /// The driver's buffer: what to write, or where the read lands.
    pub buf: B,
    /// A write (to the device) or a read (from it).
    pub write: bool,
}

/// What a wait for the device ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waited {
    /// The device signalled (something may have completed).
    Signalled,
    /// The time given passed without a signal.
    TimedOut,
    /// The device is gone (hung up, failed): nothing more will complete.
    Gone,
}

/// Why block I/O stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlkIoError {
    /// The driver refused or failed a request.
    Driver {
        /// The request's first sector (`u64::MAX` when the device completed
        /// a request it was never given).
        sector: u64,
        /// What the driver said.
        error: virtio_drivers::Error,
    },
    /// The device completed a request with a status other than OK.
    Status {
        /// The request's first sector.
        sector: u64,
        /// The status byte.
        status: u8,
    },
    /// No request completed for `waited`: the device is dead or stuck.
    /// [`RunError`] says what became of the requests in flight.
    Timeout {
        /// How long nothing completed.
        waited: Duration,
        /// Requests in flight when it gave up.
        in_flight: usize,
    },
    /// The device went away (closed its socket, failed) with requests in
    /// flight; [`RunError`] says what became of them.
    DeviceGone {
        /// Requests in flight when it went.
        in_flight: usize,
    },
    /// A buffer whose length is zero or not a multiple of the sector size.
    BadLength {
        /// The request's first sector.
        sector: u64,
        /// The length given.
        len: usize,
    },
}

impl std::fmt::Display for BlkIoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Driver { sector, error } => {
                write!(f, "virtio-blk: request at sector {sector} failed: {error}")
            }
            Self::Status { sector, status } => write!(
                f,
                "virtio-blk: the device answered the request at sector {sector} with status {status} ({})",
                match *status {
                    1 => "I/O error",
                    2 => "unsupported",
                    _ => "unknown",
                }
            ),
            Self::Timeout { waited, in_flight } => write!(
                f,
                "virtio-blk: no request completed for {waited:?} with {in_flight} in flight: the device is not answering"
            ),
            Self::DeviceGone { in_flight } => write!(
                f,
                "virtio-blk: the device went away with {in_flight} requests in flight"
            ),
            Self::BadLength { sector, len } => write!(
                f,
                "virtio-blk: request at sector {sector} has length {len}, not a non-zero multiple of {SECTOR_SIZE}"
            ),
        }
    }
}

impl std::error::Error for BlkIoError {}

/// A buffer taken apart while its request is in flight.
struct Parts<B: DmaBuffer> {
    ptr: NonNull<u8>,
    len: usize,
    rest: B::Rest,
}

impl<B: DmaBuffer> Parts<B> {
    /// The buffer's bytes.
    ///
    /// # Safety
    /// The parts are still taken apart (not yet put back together), and no
    /// other reference to the bytes is live.
    unsafe fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `DmaBuffer`'s implementation-safety contract keeps the
        // `len` bytes at `ptr` valid and unmoved while the buffer is taken
        // apart, and the caller guarantees no other reference to them.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

/// One request in flight: the driver's header, status and buffer stay
/// here, unmoved, from submission to completion.
struct Slot<B: DmaBuffer> {
    req: BlkReq,
    resp: BlkResp,
    op: Option<InFlight<B>>,
}

struct InFlight<B: DmaBuffer> {
    token: u16,
    sector: u64,
    write: bool,
    parts: Parts<B>,
}

/// What [`run`] needs of the device besides its driver: a wait, and, to
/// give a device up safely, a reset and a hand-back of the requests in
/// flight. A closure `FnMut(Duration) -> Waited` is a `Control` that can
/// only wait (a device it gives up on keeps the buffers in flight, which
/// are leaked); a [`DeviceHandle`](crate::DeviceHandle) is the whole of it,
/// for virtio-blk's one request queue, 0.
pub trait Control {
    /// Blocks until the device may have completed something, or `timeout`
    /// passes, and says which, or that the device is gone.
    fn wait(&mut self, timeout: Duration) -> Waited;

    /// Nothing is in flight and the driver has taken every used entry:
    /// start checking from the next one ([`DeviceHandle::sync_used`](crate::DeviceHandle::sync_used)).
    ///
    /// # Safety
    /// The driver is alive.
    unsafe fn sync_used(&mut self) {}

    /// The driver is about to take the next used entry, request `token`,
    /// whose chain has `writable` device-writable bytes: check the length
    /// the device reported ([`DeviceHandle::check_used`](crate::DeviceHandle::check_used)).
    ///
    /// # Safety
    /// The driver is alive, and this is called once per completion, in
    /// order, before the driver takes it.
    unsafe fn check_used(&mut self, token: u16, writable: u32) {
        let _ = (token, writable);
    }

    /// Resets the device, given up on because of `why`, so that it no
    /// longer touches the rings or the buffers; how, or `None` if it
    /// cannot be reset.
    fn reset(&mut self, why: &str) -> Option<Reset> {
        let _ = why;
        None
    }

    /// After [`reset`](Self::reset): puts `tokens` on the used ring, so
    /// the driver takes them back (and unshares their buffers). False if
    /// it cannot.
    ///
    /// # Safety
    /// As [`DeviceHandle::retire`](crate::DeviceHandle::retire).
    unsafe fn retire(&mut self, tokens: &[u16]) -> bool {
        let _ = tokens;
        false
    }
}

impl<F: FnMut(Duration) -> Waited> Control for F {
    fn wait(&mut self, timeout: Duration) -> Waited {
        self(timeout)
    }
}

/// virtio-blk's request queue.
const BLK_QUEUE: u16 = 0;

impl Control for &crate::DeviceHandle {
    fn wait(&mut self, timeout: Duration) -> Waited {
        crate::DeviceHandle::wait(self, BLK_QUEUE, timeout)
    }

    unsafe fn sync_used(&mut self) {
        // SAFETY: the caller's obligation is the handle's.
        unsafe { crate::DeviceHandle::sync_used(self, BLK_QUEUE) };
    }

    unsafe fn check_used(&mut self, token: u16, writable: u32) {
        // SAFETY: the caller's obligations are the handle's.
        let _ = unsafe { crate::DeviceHandle::check_used(self, BLK_QUEUE, token, writable) };
    }

    fn reset(&mut self, why: &str) -> Option<Reset> {
        Some(crate::DeviceHandle::reset(self, why))
    }

    unsafe fn retire(&mut self, tokens: &[u16]) -> bool {
        // SAFETY: the caller's obligations are the handle's.
        unsafe { crate::DeviceHandle::retire(self, BLK_QUEUE, tokens) }
    }
}

/// Why [`run`] stopped, and what became of the requests in flight.
#[non_exhaustive]
pub struct RunError<B> {
    /// The failure.
    pub error: BlkIoError,
    /// Requests in flight when it stopped.
    pub in_flight: usize,
    /// How the device was reset before their buffers came back; `None`
    /// when nothing was in flight, or the device could not be reset (the
    /// buffers in flight were then leaked: the device may still write
    /// them).
    pub reset: Option<Reset>,
    /// The buffers handed back: the requests in flight, each taken back
    /// from the device after the reset and unmapped (their contents are
    /// whatever the device wrote, if anything), and a request not yet
    /// submitted.
    pub returned: Vec<BlockOp<B>>,
}

impl<B> std::fmt::Debug for RunError<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunError")
            .field("error", &self.error)
            .field("in_flight", &self.in_flight)
            .field("reset", &self.reset)
            .field("returned", &self.returned.len())
            .finish()
    }
}

impl<B> std::fmt::Display for RunError<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.error)?;
        let n = self.in_flight;
        match self.reset {
            _ if n == 0 => Ok(()),
            Some(how) => write!(
                f,
                "; the device was reset ({how}), then the {n} requests in flight were unmapped and returned"
            ),
            None => write!(
                f,
                "; the {n} requests in flight were leaked: the device could not be reset"
            ),
        }
    }
}

impl<B> std::error::Error for RunError<B> {}

/// Runs `ops` through `blk`, at most `depth` in flight (at least one; the
/// driver's own queue bounds it too). `control` waits for the device (a
/// [`DeviceHandle`](crate::DeviceHandle), or a closure that blocks until
/// the device may have completed something or the time given passes; a
/// sleep that answers [`Waited::TimedOut`] is enough). `done` gets each
/// completed request, with its buffer, in completion order. Gives up when
/// nothing completes for `patience`, or at once when the device is gone.
///
/// Every used length is checked against its request's device-writable
/// bytes ([`Control::check_used`]); nothing is ever copied past a buffer
/// (unshare copies the mapping's own length).
///
/// A request larger than the `Hal` can share panics there (virtio-drivers'
/// `share` has no error return): keep requests within the largest mapping
/// of the device's tlb (`Pool::max_mapping_size`).
///
/// # Errors
/// The first failure. With requests in flight, the device is then reset
/// first ([`Control::reset`]: it can no longer touch the rings or the
/// buffers), and only then are the requests handed back to the driver
/// ([`Control::retire`]), their mappings unmapped and their buffers
/// returned in [`RunError::returned`]. A device that cannot be reset (a
/// closure as `control`) keeps them: they are leaked. Either way the
/// driver should be dropped.
pub fn run<H, T, B, I, C>(
    blk: &mut VirtIOBlk<H, T>,
    ops: I,
    depth: usize,
    patience: Duration,
    mut control: C,
    mut done: impl FnMut(BlockOp<B>),
) -> Result<(), RunError<B>>
where
    H: Hal,
    T: Transport,
    B: DmaBuffer,
    I: IntoIterator<Item = BlockOp<B>>,
    C: Control,
{
    let mut ops = ops.into_iter();
    // A request the driver's queue had no room for, tried again first.
    let mut pending: Option<(u64, bool, Parts<B>)> = None;
    // Never more in flight than a virtqueue has entries.
    let mut slots: Box<[Slot<B>]> = (0..depth.clamp(1, usize::from(u16::MAX)))
        .map(|_| Slot {
            req: BlkReq::default(),
            resp: BlkResp::default(),
            op: None,
        })
        .collect();
    // SAFETY: the driver is alive (borrowed here) with nothing of ours in
    // flight (its own blocking calls wait for their answers).
    unsafe { control.sync_used() };
    let mut in_flight = 0usize;
    let mut last_progress = Instant::now();
    let mut gone = false;
    let error = 'run: loop {
        // Fill free slots while the driver's queue takes them.
        let mut queue_full = false;
        while in_flight < slots.len() && !queue_full {
            let (sector, write, mut parts) = match pending.take() {
                Some(p) => p,
                None => match ops.next() {
                    Some(op) => {
                        let (ptr, len, rest) = op.buf.into_raw_parts();
                        (op.sector, op.write, Parts { ptr, len, rest })
                    }
                    None => break,
                },
            };
            if parts.len == 0 || parts.len % SECTOR_SIZE != 0 {
                let len = parts.len;
                pending = Some((sector, write, parts));
                break 'run BlkIoError::BadLength { sector, len };
            }
            let free = slots
                .iter()
                .position(|s| s.op.is_none())
                .expect("fewer in flight than slots");
            let slot = &mut slots[free];
            let block = usize::try_from(sector).unwrap_or(usize::MAX);
            // SAFETY: the parts were taken apart above or kept so since a
            // full queue refused them, and nothing else refers to the bytes.
            let buf = unsafe { parts.bytes() };
            let submitted = if write {
                // SAFETY: `req`, `resp` and the buffer's bytes stay in
                // place and untouched (the slot array is never reallocated;
                // the buffer stays taken apart) until
                // `complete_write_blocks` below, or are leaked if the device
                // never completes them.
                unsafe { blk.write_blocks_nb(block, &mut slot.req, buf, &mut slot.resp) }
            } else {
                // SAFETY: as for the write: the same slot, the same bytes,
                // untouched until `complete_read_blocks` or leaked.
                unsafe { blk.read_blocks_nb(block, &mut slot.req, buf, &mut slot.resp) }
            };
            match submitted {
                Ok(token) => {
                    slot.op = Some(InFlight {
                        token,
                        sector,
                        write,
                        parts,
                    });
                    in_flight += 1;
                }
                Err(virtio_drivers::Error::QueueFull) if in_flight > 0 => {
                    // Tried again after the next completion frees room.
                    pending = Some((sector, write, parts));
                    queue_full = true;
                }
                Err(error) => {
                    pending = Some((sector, write, parts));
                    break 'run BlkIoError::Driver { sector, error };
                }
            }
        }
        if in_flight == 0 && pending.is_none() {
            // Nothing in flight and the loop above took no more: all done.
            return Ok(());
        }
        // Complete whatever the device has finished.
        let mut completed = false;
        while let Some(token) = blk.peek_used() {
            match complete(blk, &mut slots, &mut control, token) {
                None => {
                    break 'run BlkIoError::Driver {
                        sector: u64::MAX,
                        error: virtio_drivers::Error::WrongToken,
                    }
                }
                Some((op, Ok(()))) => {
                    in_flight -= 1;
                    done(op);
                    completed = true;
                }
                Some((op, Err(e))) => {
                    in_flight -= 1;
                    // A failed request comes back with the others.
                    pending = pending.or_else(|| {
                        let (ptr, len, rest) = op.buf.into_raw_parts();
                        Some((op.sector, op.write, Parts { ptr, len, rest }))
                    });
                    break 'run e;
                }
            }
        }
        if completed {
            last_progress = Instant::now();
            continue;
        }
        if gone {
            // Whatever it completed before it went was taken above.
            break BlkIoError::DeviceGone { in_flight };
        }
        let waited = last_progress.elapsed();
        if waited >= patience {
            break BlkIoError::Timeout { waited, in_flight };
        }
        gone = control.wait((patience - waited).min(Duration::from_millis(100))) == Waited::Gone;
    };
    let mut returned = Vec::new();
    if let Some((sector, write, parts)) = pending.take() {
        returned.push(BlockOp {
            sector,
            buf: give_back(parts),
            write,
        });
    }
    let mut stopped = RunError {
        error,
        in_flight,
        reset: None,
        returned,
    };
    if in_flight == 0 {
        return Err(stopped);
    }
    // Reset first: the device can no longer touch the rings or the
    // buffers. Only then do the buffers come back.
    let Some(how) = control.reset(&stopped.error.to_string()) else {
        leak_in_flight(&mut slots);
        return Err(stopped);
    };
    stopped.reset = Some(how);
    // What the device completed before the reset is taken as it is.
    while let Some(token) = blk.peek_used() {
        match complete(blk, &mut slots, &mut control, token) {
            None => break,
            Some((op, Ok(()))) => done(op),
            Some((op, Err(_))) => stopped.returned.push(op),
        }
    }
    let tokens: Vec<u16> = slots
        .iter()
        .filter_map(|s| s.op.as_ref().map(|f| f.token))
        .collect();
    // SAFETY: the driver is alive (borrowed here); every used entry it
    // took was checked; the tokens are its requests in flight, each once.
    if !unsafe { control.retire(&tokens) } {
        leak_in_flight(&mut slots);
        return Err(stopped);
    }
    for token in tokens {
        // The entry `retire` put there: the driver takes it whatever its
        // status (none: the device never answered).
        if blk.peek_used() != Some(token) {
            leak_in_flight(&mut slots);
            return Err(stopped);
        }
        match complete(blk, &mut slots, &mut Unchecked, token) {
            Some((op, _)) => stopped.returned.push(op),
            None => {
                leak_in_flight(&mut slots);
                return Err(stopped);
            }
        }
    }
    Err(stopped)
}

/// A control that checks nothing: for the entries `retire` wrote itself.
struct Unchecked;

impl Control for Unchecked {
    fn wait(&mut self, _timeout: Duration) -> Waited {
        Waited::Gone
    }
}

/// Completes request `token`, next on the used ring: checks its used
/// length, lets the driver take it (unsharing its buffers) and puts its
/// buffer back together. `None` if no request in flight has that token.
fn complete<H, T, B, C>(
    blk: &mut VirtIOBlk<H, T>,
    slots: &mut [Slot<B>],
    control: &mut C,
    token: u16,
) -> Option<(BlockOp<B>, Result<(), BlkIoError>)>
where
    H: Hal,
    T: Transport,
    B: DmaBuffer,
    C: Control,
{
    let slot = slots
        .iter_mut()
        .find(|s| s.op.as_ref().is_some_and(|f| f.token == token))?;
    let mut f = slot.op.take().expect("found by its request");
    // The status byte, and the data of a read.
    let writable = if f.write { 1 } else { f.parts.len + 1 };
    // SAFETY: the driver is alive (borrowed here), and it takes this
    // entry next, below.
    unsafe { control.check_used(token, u32::try_from(writable).unwrap_or(u32::MAX)) };
    // SAFETY: still taken apart; the driver's own reference to the
    // bytes ended with the submission call.
    let buf = unsafe { f.parts.bytes() };
    let r = if f.write {
        // SAFETY: the same request header, bytes and status as were
        // given to `write_blocks_nb` for this token.
        unsafe { blk.complete_write_blocks(token, &slot.req, buf, &mut slot.resp) }
    } else {
        // SAFETY: the same request header, bytes and status as were
        // given to `read_blocks_nb` for this token.
        unsafe { blk.complete_read_blocks(token, &slot.req, buf, &mut slot.resp) }
    };
    let status = slot.resp.status();
    let sector = f.sector;
    let op = BlockOp {
        sector,
        buf: give_back(f.parts),
        write: f.write,
    };
    let r = r.map_err(|error| {
        if status == RespStatus::OK {
            BlkIoError::Driver { sector, error }
        } else {
            BlkIoError::Status {
                sector,
                status: status_byte(status),
            }
        }
    });
    Some((op, r))
}

/// Puts a buffer that is no longer in flight back together.
fn give_back<B: DmaBuffer>(p: Parts<B>) -> B {
    // SAFETY: the parts of one `into_raw_parts`, each used once (the
    // `Parts` is consumed), and the driver and device are done with the
    // bytes: the request was completed, or never submitted.
    unsafe { B::from_raw_parts(p.ptr, p.len, p.rest) }
}

/// The status byte of a response.
fn status_byte(s: RespStatus) -> u8 {
    zerocopy::IntoBytes::as_bytes(&s)[0]
}

/// Leaks every slot with a request in flight, header, status and buffer:
/// the device may write them at any time after we give up on it.
fn leak_in_flight<B: DmaBuffer>(slots: &mut Box<[Slot<B>]>) {
    if slots.iter().any(|s| s.op.is_some()) {
        std::mem::forget(std::mem::take(slots));
    }
}
