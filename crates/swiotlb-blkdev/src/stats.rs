//! What the device did: counters a test reads, in process or from the
//! `--stats` file.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// A snapshot of the device's counters, as written to the `--stats` file
/// (JSON, one object with these fields).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Stats {
    /// Requests taken off the available ring, answered or not.
    pub requests: u64,
    /// VIRTIO_BLK_T_IN requests answered with VIRTIO_BLK_S_OK.
    pub reads: u64,
    /// VIRTIO_BLK_T_OUT requests answered with VIRTIO_BLK_S_OK.
    pub writes: u64,
    /// VIRTIO_BLK_T_FLUSH requests answered with VIRTIO_BLK_S_OK.
    pub flushes: u64,
    /// VIRTIO_BLK_T_GET_ID requests answered with VIRTIO_BLK_S_OK.
    pub get_ids: u64,
    /// Requests of a type the device does not implement (VIRTIO_BLK_S_UNSUPP).
    pub unsupported: u64,
    /// Requests answered with VIRTIO_BLK_S_IOERR, or with no status at all
    /// because the chain had no place for one.
    pub io_errors: u64,
    /// Bytes read from the image into guest memory.
    pub bytes_read: u64,
    /// Bytes written from guest memory to the image.
    pub bytes_written: u64,
    /// Requests taken but never answered ([`crate::Faults::with_hang_after`]).
    pub unanswered: u64,
    /// Lies told: each overrun, rewrite, wrong used length, corrupted read
    /// or request pointed outside guest memory.
    pub faults: u64,
    /// Requests refused (answered VIRTIO_BLK_S_IOERR, counted in
    /// `io_errors` too) because a buffer lay outside guest memory: a
    /// descriptor found outside it before use, or a copy the guest memory
    /// map refused. Each is also a line on stderr.
    #[serde(default)]
    pub outside: u64,
}

/// The live counters behind [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) reads: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) get_ids: AtomicU64,
    pub(crate) unsupported: AtomicU64,
    pub(crate) io_errors: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) unanswered: AtomicU64,
    pub(crate) faults: AtomicU64,
    pub(crate) outside: AtomicU64,
}

impl Counters {
    /// Add `n` to a counter. Relaxed: the counters are statistics, read after
    /// the fact, and order nothing else.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            requests: get(&self.requests),
            reads: get(&self.reads),
            writes: get(&self.writes),
            flushes: get(&self.flushes),
            get_ids: get(&self.get_ids),
            unsupported: get(&self.unsupported),
            io_errors: get(&self.io_errors),
            bytes_read: get(&self.bytes_read),
            bytes_written: get(&self.bytes_written),
            unanswered: get(&self.unanswered),
            faults: get(&self.faults),
            outside: get(&self.outside),
        }
    }
}
