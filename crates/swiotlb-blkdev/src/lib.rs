//! A vhost-user-blk device backend over a raw image file, run as a process of
//! its own: the device the `swiotlb` command falls back to when no external
//! one (`qemu-storage-daemon`) is found, and the base of the misbehaving
//! devices of the reliability tests.
//!
//! The driver side (the unmodified virtio-drivers `VirtIOBlk` behind the
//! bounce pool) shares guest memory with this process over vhost-user; the
//! device reaches that memory and nothing else. A descriptor pointing
//! outside it is answered with VIRTIO_BLK_S_IOERR, never followed.
//!
//! # Usage
//!
//! As a process: `swiotlb-blkdev --socket PATH --image PATH [--readonly]
//! [--stats PATH] [--serial STRING]`. It serves one frontend connection and
//! exits 0 when the frontend hangs up or on SIGTERM; it is ready once the
//! socket file exists.
//!
//! As a library, e.g. from a subcommand that flattens [`BlkArgs`] and calls
//! [`main_with_args`], or in process:
//!
//! ```no_run
//! use swiotlb_blkdev::{serve, BlkConfig, Faults};
//!
//! let config = BlkConfig::new("/tmp/blk.sock", "/tmp/disk.img")
//!     .with_stats("/tmp/blk-stats.json")
//!     .with_faults(Faults::none().with_corrupt_reads());
//! let stats = serve(config)?;
//! eprintln!("{} requests", stats.requests);
//! # Ok::<(), swiotlb_blkdev::Error>(())
//! ```
//!
//! [`Server::bind`] and [`Server::run`] split [`serve`] in two, so that the
//! caller can take a [`Stopper`] first.
//!
//! # The device
//!
//! One queue of [`QUEUE_SIZE`] entries; VIRTIO_BLK_T_IN, T_OUT, T_FLUSH and
//! T_GET_ID, anything else answered VIRTIO_BLK_S_UNSUPP. The used length is
//! the bytes written into device-writable buffers plus the status byte.
//! Features: VIRTIO_F_VERSION_1, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_BLK_SIZE,
//! VIRTIO_BLK_F_FLUSH, VIRTIO_RING_F_EVENT_IDX, VIRTIO_BLK_F_RO when read-only,
//! and VHOST_USER_F_PROTOCOL_FEATURES with the protocol features CONFIG, MQ,
//! CONFIGURE_MEM_SLOTS (regions added and removed while running) and
//! REPLY_ACK.
//!
//! # Lying
//!
//! [`Faults`] makes the device break its promises in chosen ways; the
//! command takes them as hidden `--fault-*` flags. The [`Stats`] counters
//! (also written to `--stats PATH` as JSON) say what it did.
//!
//! # Safety and correctness
//!
//! There is no unsafe code here. Guest memory is mapped and accessed by
//! vm-memory; every descriptor is checked against the current regions
//! (`GuestMemory::check_range`) before any byte moves, and every copy goes
//! through vm-memory's checked `read_slice` / `write_slice`, so a hostile or
//! buggy frontend makes requests fail, not this process. Data moves through a
//! bounded buffer, so a chain that claims gigabytes costs a fixed amount of
//! memory. The regions the frontend adds or removes while running replace
//! the memory atomically (vhost-user-backend's `GuestMemoryAtomic`); a queue
//! pass holds one snapshot of it from start to end.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod args;
mod backend;
mod device;
mod fault;
mod server;
mod stats;

use std::fmt;
use std::path::PathBuf;

pub use args::{main_with_args, BlkArgs};
pub use backend::{QUEUE_SIZE, SEG_MAX};
pub use device::SECTOR_SIZE;
pub use fault::{Faults, OutsideAddr, DIED_EXIT_CODE, FAULT_BYTE};
pub use server::{serve, BlkConfig, Server, Stopper, DEFAULT_SERIAL};
pub use stats::Stats;

/// Why the device could not start or stopped with an error.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The image could not be opened or measured.
    Image {
        /// The image's path.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The socket could not be created.
    Listen {
        /// The socket's path.
        path: PathBuf,
        /// What vhost said.
        source: vhost::vhost_user::Error,
    },
    /// The vhost-user daemon failed: accepting, or serving the connection
    /// (vhost-user-backend's error, as text: it is neither `Sync` nor an
    /// `std::error::Error`).
    Daemon(String),
    /// The stats file could not be written.
    Stats {
        /// The stats file's path.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The signal handler could not be installed (one per process).
    Signal(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Image { path, source } => {
                write!(
                    f,
                    "swiotlb-blkdev: cannot open image {}: {source}",
                    path.display()
                )
            }
            Self::Listen { path, source } => {
                write!(
                    f,
                    "swiotlb-blkdev: cannot listen on {}: {source}",
                    path.display()
                )
            }
            Self::Daemon(e) => write!(f, "swiotlb-blkdev: vhost-user connection failed: {e}"),
            Self::Stats { path, source } => {
                write!(
                    f,
                    "swiotlb-blkdev: cannot write stats to {}: {source}",
                    path.display()
                )
            }
            Self::Signal(e) => write!(f, "swiotlb-blkdev: cannot handle SIGTERM: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Image { source, .. } | Self::Stats { source, .. } => Some(source),
            Self::Listen { source, .. } => Some(source),
            Self::Daemon(_) | Self::Signal(_) => None,
        }
    }
}
