//! Block I/O with deadlines over the unmodified `virtio-drivers` block
//! driver: many requests in flight through its non-blocking calls, every
//! wait bounded, so a dead or silent device ends in an error instead of the
//! spin of the driver's blocking calls.
//!
//! A buffer in flight is taken apart ([`DmaBuffer::into_raw_parts`]) when
//! its request is submitted and put back together only when the device has
//! completed it: its bytes stay where the driver (and, for a buffer the
//! device reaches directly, the device) was told they are, whatever the
//! caller's buffer type, and a buffer the device never gives back is leaked,
//! never handed back while the device may still write it.

use std::ptr::NonNull;
use std::time::{Duration, Instant};

use swiotlb::DmaBuffer;
use virtio_drivers::device::blk::{BlkReq, BlkResp, RespStatus, VirtIOBlk, SECTOR_SIZE};
use virtio_drivers::transport::Transport;
use virtio_drivers::Hal;

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
    /// No request completed for `waited`: the device is dead or stuck. The
    /// buffers of the requests still in flight were leaked, since the
    /// device may still write them.
    Timeout {
        /// How long nothing completed.
        waited: Duration,
        /// Requests in flight when it gave up.
        in_flight: usize,
    },
    /// The device went away (closed its socket, failed) with requests in
    /// flight; their buffers were leaked.
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

/// Runs `ops` through `blk`, at most `depth` in flight (at least one; the
/// driver's own queue bounds it too). `wait` blocks until the device may
/// have completed something, or the time given passes, and says which, or
/// that the device is gone ([`DeviceHandle::wait`](crate::DeviceHandle::wait);
/// a sleep that answers [`Waited::TimedOut`] is enough). `done` gets each
/// completed request, with its buffer, in completion order. Gives up when
/// nothing completes for `patience`, or at once when the device is gone.
///
/// A request larger than the `Hal` can share panics there (virtio-drivers'
/// `share` has no error return): keep requests within the largest mapping
/// of the device's tlb (`Pool::max_mapping_size`).
///
/// # Errors
/// The first failure. The buffers of requests still in flight then are
/// leaked (the device may still write them), and the driver should be
/// dropped and the device reset.
pub fn run<H, T, B, I>(
    blk: &mut VirtIOBlk<H, T>,
    ops: I,
    depth: usize,
    patience: Duration,
    mut wait: impl FnMut(Duration) -> Waited,
    mut done: impl FnMut(BlockOp<B>),
) -> Result<(), BlkIoError>
where
    H: Hal,
    T: Transport,
    B: DmaBuffer,
    I: IntoIterator<Item = BlockOp<B>>,
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
    let mut in_flight = 0usize;
    let mut last_progress = Instant::now();
    let mut gone = false;
    loop {
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
                give_back(parts);
                leak_in_flight(&mut slots);
                return Err(BlkIoError::BadLength { sector, len });
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
                    give_back(parts);
                    leak_in_flight(&mut slots);
                    return Err(BlkIoError::Driver { sector, error });
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
            let Some(slot) = slots
                .iter_mut()
                .find(|s| s.op.as_ref().is_some_and(|f| f.token == token))
            else {
                leak_in_flight(&mut slots);
                return Err(BlkIoError::Driver {
                    sector: u64::MAX,
                    error: virtio_drivers::Error::WrongToken,
                });
            };
            let mut f = slot.op.take().expect("found by its request");
            in_flight -= 1;
            // SAFETY: still taken apart; the driver's own reference to the
            // bytes ended with the submission call.
            let buf = unsafe { f.parts.bytes() };
            let r = if f.write {
                // SAFETY: the same request header, bytes and status as
                // were given to `write_blocks_nb` for this token.
                unsafe { blk.complete_write_blocks(token, &slot.req, buf, &mut slot.resp) }
            } else {
                // SAFETY: the same request header, bytes and status as
                // were given to `read_blocks_nb` for this token.
                unsafe { blk.complete_read_blocks(token, &slot.req, buf, &mut slot.resp) }
            };
            let status = slot.resp.status();
            let sector = f.sector;
            let buf = give_back(f.parts);
            if let Err(error) = r {
                leak_in_flight(&mut slots);
                return Err(if status == RespStatus::OK {
                    BlkIoError::Driver { sector, error }
                } else {
                    BlkIoError::Status {
                        sector,
                        status: status_byte(status),
                    }
                });
            }
            done(BlockOp {
                sector,
                buf,
                write: f.write,
            });
            completed = true;
        }
        if completed {
            last_progress = Instant::now();
            continue;
        }
        if gone {
            // Whatever it completed before it went was taken above.
            leak_in_flight(&mut slots);
            return Err(BlkIoError::DeviceGone { in_flight });
        }
        let waited = last_progress.elapsed();
        if waited >= patience {
            leak_in_flight(&mut slots);
            return Err(BlkIoError::Timeout { waited, in_flight });
        }
        gone = wait((patience - waited).min(Duration::from_millis(100))) == Waited::Gone;
    }
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
