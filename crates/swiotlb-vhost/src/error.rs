//! What can go wrong between the transport and its vhost-user device.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// An error of the vhost-user transport. Every message names vhost-user,
/// the device's socket and the step that failed, so that a user can tell a
/// daemon that never came up from one that died mid-way from one that
/// refused a request.
#[derive(Debug)]
#[non_exhaustive]
pub enum TransportError {
    /// No connection to the socket within the time allowed (the daemon is
    /// not running, or not yet listening).
    Connect {
        /// The device's socket.
        socket: PathBuf,
        /// How long connecting was retried.
        waited: Duration,
        /// The last error of `connect(2)`.
        source: io::Error,
    },
    /// A request failed: the socket broke, a reply did not come within the
    /// deadline, or the device answered with an error.
    Protocol {
        /// The device's socket.
        socket: PathBuf,
        /// The request (`SET_MEM_TABLE`, `GET_CONFIG`, ...).
        step: &'static str,
        /// What the vhost-user frontend reported.
        source: vhost::Error,
    },
    /// The device did not answer a request in time; the transport shut
    /// the socket down, so the device is failed.
    Timeout {
        /// The device's socket.
        socket: PathBuf,
        /// The request awaited.
        step: &'static str,
        /// How long it was awaited.
        waited: Duration,
    },
    /// The device failed earlier (the first failure is latched) and is
    /// shown to the driver as `DEVICE_NEEDS_RESET`; nothing more is sent.
    Failed {
        /// The device's socket.
        socket: PathBuf,
        /// The step that failed first.
        step: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// The device lacks a feature the transport needs for this step.
    MissingFeature {
        /// The device's socket.
        socket: PathBuf,
        /// The step that needed it.
        step: &'static str,
        /// The feature (`VHOST_USER_F_PROTOCOL_FEATURES`,
        /// `VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS`, ...).
        feature: &'static str,
    },
    /// A ring address the driver gave lies in no region of the device's
    /// memory table, so the device could not reach it.
    OutsideRegions {
        /// The device's socket.
        socket: PathBuf,
        /// The ring part (`descriptors`, `driver area`, `device area`).
        what: &'static str,
        /// Its DMA address.
        dma: u64,
        /// Its length in bytes.
        len: u64,
    },
    /// The memory table is empty, or the device has no free slot for
    /// another region.
    MemoryTable {
        /// The device's socket.
        socket: PathBuf,
        /// Regions in the table (or asked for).
        regions: usize,
        /// Slots the device offers.
        slots: u64,
    },
    /// A region that cannot be added or removed as given: empty, wrapping
    /// past the top of the address space, overlapping one the device
    /// holds, or (for a removal) not in the table. Nothing was sent.
    BadRegion {
        /// The device's socket.
        socket: PathBuf,
        /// The request it was meant for (`ADD_MEM_REG`, `REM_MEM_REG`).
        step: &'static str,
        /// Its device address.
        dma: u64,
        /// Its length.
        len: u64,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A local resource (an eventfd, `poll(2)`) failed.
    Io {
        /// The device's socket.
        socket: PathBuf,
        /// What was being done.
        step: &'static str,
        /// The error.
        source: io::Error,
    },
}

impl TransportError {
    /// The device's socket.
    pub fn socket(&self) -> &std::path::Path {
        match self {
            Self::Connect { socket, .. }
            | Self::Protocol { socket, .. }
            | Self::Timeout { socket, .. }
            | Self::Failed { socket, .. }
            | Self::MissingFeature { socket, .. }
            | Self::OutsideRegions { socket, .. }
            | Self::MemoryTable { socket, .. }
            | Self::BadRegion { socket, .. }
            | Self::Io { socket, .. } => socket,
        }
    }

    /// Whether the error is one of the socket (broken, closed, timed out,
    /// out of step): after it the device is failed for good.
    pub(crate) fn is_fatal(&self) -> bool {
        use vhost::vhost_user::Error as U;
        match self {
            Self::Protocol { source, .. } => !matches!(
                source,
                vhost::Error::VhostUserProtocol(
                    U::BackendInternalError
                        | U::InactiveFeature(_)
                        | U::InactiveOperation(_)
                        | U::InvalidParam
                )
            ),
            Self::Connect { .. }
            | Self::Timeout { .. }
            | Self::Failed { .. }
            | Self::OutsideRegions { .. } => true,
            Self::MissingFeature { .. }
            | Self::MemoryTable { .. }
            | Self::BadRegion { .. }
            | Self::Io { .. } => false,
        }
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect {
                socket,
                waited,
                source,
            } => write!(
                f,
                "vhost-user: no device listening on {} after {:?}: {source}",
                socket.display(),
                waited
            ),
            Self::Protocol {
                socket,
                step,
                source,
            } => write!(
                f,
                "vhost-user device at {}: {step} failed: {source}",
                socket.display()
            ),
            Self::Timeout {
                socket,
                step,
                waited,
            } => write!(
                f,
                "vhost-user device at {}: no answer to {step} within {waited:?}; the connection was shut down",
                socket.display()
            ),
            Self::BadRegion {
                socket,
                step,
                dma,
                len,
                why,
            } => write!(
                f,
                "vhost-user device at {}: {step} of {len} bytes at {dma:#x} not sent: {why}",
                socket.display()
            ),
            Self::Failed {
                socket,
                step,
                reason,
            } => write!(
                f,
                "vhost-user device at {} has failed (at {step}: {reason}) and needs a reset",
                socket.display()
            ),
            Self::MissingFeature {
                socket,
                step,
                feature,
            } => write!(
                f,
                "vhost-user device at {}: {step} needs {feature}, which the device does not offer",
                socket.display()
            ),
            Self::OutsideRegions {
                socket,
                what,
                dma,
                len,
            } => write!(
                f,
                "vhost-user device at {}: the ring's {what} ({len} bytes at DMA {dma:#x}) lies in no region of the device's memory table",
                socket.display()
            ),
            Self::MemoryTable {
                socket,
                regions,
                slots,
            } => write!(
                f,
                "vhost-user device at {}: a memory table of {regions} regions does not fit the device's {slots} slots (or is empty)",
                socket.display()
            ),
            Self::Io {
                socket,
                step,
                source,
            } => write!(
                f,
                "vhost-user device at {}: {step}: {source}",
                socket.display()
            ),
        }
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect { source, .. } | Self::Io { source, .. } => Some(source),
            Self::Protocol { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<TransportError> for io::Error {
    fn from(e: TransportError) -> Self {
        let kind = match &e {
            TransportError::MissingFeature { .. } => io::ErrorKind::Unsupported,
            TransportError::MemoryTable { .. } => io::ErrorKind::OutOfMemory,
            TransportError::Connect { .. } => io::ErrorKind::NotConnected,
            TransportError::Timeout { .. } => io::ErrorKind::TimedOut,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}
