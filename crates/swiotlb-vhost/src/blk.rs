//! Block I/O with deadlines over the unmodified `virtio-drivers` block
//! driver: many requests in flight through its non-blocking calls, every
//! wait bounded, so a dead or silent device ends in an error instead of the
//! spin of the driver's blocking calls.

use std::time::{Duration, Instant};

use virtio_drivers::device::blk::{BlkReq, BlkResp, RespStatus, VirtIOBlk, SECTOR_SIZE};
use virtio_drivers::transport::Transport;
use virtio_drivers::Hal;

/// One block request: `buf.len()` bytes (a non-zero multiple of
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

/// Why block I/O stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlkIoError {
    /// The driver refused or failed a request.
    Driver {
        /// The request's first sector.
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
            Self::BadLength { sector, len } => write!(
                f,
                "virtio-blk: request at sector {sector} has length {len}, not a non-zero multiple of {SECTOR_SIZE}"
            ),
        }
    }
}

impl std::error::Error for BlkIoError {}

/// One request in flight: the driver's header, status and buffer stay here,
/// unmoved, from submission to completion.
struct Slot<B> {
    req: BlkReq,
    resp: BlkResp,
    op: Option<(u16, BlockOp<B>)>,
}

/// Runs `ops` through `blk`, at most `depth` in flight (at least one; the
/// driver's own queue bounds it too). `wait` blocks until the device may
/// have completed something, or the time given passes (the transport's
/// call-eventfd wait; a spin with a sleep is enough). `done` gets each
/// completed request, with its buffer, in completion order. Gives up when
/// nothing completes for `patience`.
///
/// # Errors
/// The first failure; requests still in flight then are not completed.
pub fn run<H, T, B, I>(
    blk: &mut VirtIOBlk<H, T>,
    ops: I,
    depth: usize,
    patience: Duration,
    mut wait: impl FnMut(Duration) -> bool,
    mut done: impl FnMut(BlockOp<B>),
) -> Result<(), BlkIoError>
where
    H: Hal,
    T: Transport,
    B: AsMut<[u8]>,
    I: IntoIterator<Item = BlockOp<B>>,
{
    let mut ops = ops.into_iter();
    // A request the driver's queue had no room for, tried again first.
    let mut pending: Option<BlockOp<B>> = None;
    let mut slots: Box<[Slot<B>]> = (0..depth.max(1))
        .map(|_| Slot {
            req: BlkReq::default(),
            resp: BlkResp::default(),
            op: None,
        })
        .collect();
    let mut in_flight = 0usize;
    let mut last_progress = Instant::now();
    let result = loop {
        // Fill free slots while the driver's queue takes them.
        let mut queue_full = false;
        while in_flight < slots.len() && !queue_full {
            let Some(mut op) = pending.take().or_else(|| ops.next()) else {
                break;
            };
            let free = slots
                .iter()
                .position(|s| s.op.is_none())
                .expect("fewer in flight than slots");
            let len = op.buf.as_mut().len();
            if len == 0 || len % SECTOR_SIZE != 0 {
                break_with_leak(&mut slots);
                return Err(BlkIoError::BadLength {
                    sector: op.sector,
                    len,
                });
            }
            let slot = &mut slots[free];
            let sector = usize::try_from(op.sector).unwrap_or(usize::MAX);
            let submitted = if op.write {
                // SAFETY: `req`, `resp` and the buffer stay in this slot,
                // unmoved and untouched (the slot array is never
                // reallocated; the buffer's bytes, on the heap or in shared
                // memory, do not move with `op`), until
                // `complete_write_blocks` below, or are leaked if the device
                // never completes them.
                unsafe {
                    blk.write_blocks_nb(sector, &mut slot.req, op.buf.as_mut(), &mut slot.resp)
                }
            } else {
                // SAFETY: as for the write: the same slot, the same
                // buffer, untouched until `complete_read_blocks` or leaked.
                unsafe {
                    blk.read_blocks_nb(sector, &mut slot.req, op.buf.as_mut(), &mut slot.resp)
                }
            };
            match submitted {
                Ok(token) => {
                    slot.op = Some((token, op));
                    in_flight += 1;
                }
                Err(virtio_drivers::Error::QueueFull) if in_flight > 0 => {
                    // Tried again after the next completion frees room.
                    pending = Some(op);
                    queue_full = true;
                }
                Err(error) => {
                    break_with_leak(&mut slots);
                    return Err(BlkIoError::Driver {
                        sector: op.sector,
                        error,
                    });
                }
            }
        }
        if in_flight == 0 && pending.is_none() {
            // Nothing in flight and the loop above took no more: all done.
            break Ok(());
        }
        // Complete whatever the device has finished.
        let mut completed = false;
        while let Some(token) = blk.peek_used() {
            let Some(slot) = slots
                .iter_mut()
                .find(|s| s.op.as_ref().is_some_and(|(t, _)| *t == token))
            else {
                break_with_leak(&mut slots);
                return Err(BlkIoError::Driver {
                    sector: u64::MAX,
                    error: virtio_drivers::Error::WrongToken,
                });
            };
            let (_, mut op) = slot.op.take().expect("found by its op");
            in_flight -= 1;
            let r = if op.write {
                // SAFETY: the same request header, buffer and status as
                // were given to `write_blocks_nb` for this token.
                unsafe {
                    blk.complete_write_blocks(token, &slot.req, op.buf.as_mut(), &mut slot.resp)
                }
            } else {
                // SAFETY: the same request header, buffer and status as
                // were given to `read_blocks_nb` for this token.
                unsafe {
                    blk.complete_read_blocks(token, &slot.req, op.buf.as_mut(), &mut slot.resp)
                }
            };
            if let Err(error) = r {
                let status = slot.resp.status();
                break_with_leak(&mut slots);
                return Err(if status == RespStatus::OK {
                    BlkIoError::Driver {
                        sector: op.sector,
                        error,
                    }
                } else {
                    BlkIoError::Status {
                        sector: op.sector,
                        status: status_byte(status),
                    }
                });
            }
            done(op);
            completed = true;
        }
        if completed {
            last_progress = Instant::now();
            continue;
        }
        let waited = last_progress.elapsed();
        if waited >= patience {
            break Err(BlkIoError::Timeout { waited, in_flight });
        }
        wait((patience - waited).min(Duration::from_millis(100)));
    };
    if result.is_err() {
        break_with_leak(&mut slots);
    }
    result
}

/// The status byte of a response.
fn status_byte(s: RespStatus) -> u8 {
    zerocopy::IntoBytes::as_bytes(&s)[0]
}

/// Leaks every slot still in flight: the device may write its header,
/// status and buffer at any time after we give up on it.
fn break_with_leak<B>(slots: &mut Box<[Slot<B>]>) {
    if slots.iter().any(|s| s.op.is_some()) {
        let leaked = std::mem::take(slots);
        std::mem::forget(leaked);
    }
}
