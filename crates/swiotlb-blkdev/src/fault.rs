//! How the device lies: the knobs of a misbehaving device.
//!
//! A correct device is a [`Faults::none`]. Each knob makes it break one
//! promise a virtio-blk device makes to its driver, so that a test of the
//! bounce pool can check that the driver side survives the lie (or reports
//! it) rather than trusting the device:
//!
//! | knob | broken promise |
//! | --- | --- |
//! | [`overrun`](Faults::with_overrun) | writes only into the buffers it was given |
//! | [`rewrite`](Faults::with_rewrite) | leaves a buffer alone once it has completed it |
//! | [`used_len_delta`](Faults::with_used_len_delta) | reports the bytes it wrote as used length |
//! | [`corrupt_reads`](Faults::with_corrupt_reads) | returns the data that is on the disk |
//! | [`hang_after`](Faults::with_hang_after) | answers every request |
//! | [`die_after`](Faults::with_die_after) | stays alive |
//! | [`outside`](Faults::with_outside) | uses the addresses its descriptors name |
//!
//! Even a lying device writes only inside the guest regions the frontend
//! shared with it: the lies are about the driver's buffers, never about this
//! process's own memory. The `outside` knob tries to go further, and shows
//! that it cannot: every access goes through the guest memory map, which
//! holds only the shared regions.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The byte a lying device writes where it should not (overruns and
/// rewrites), so that a test can recognise it.
pub const FAULT_BYTE: u8 = 0xA5;

/// The exit status of a device that died on purpose ([`Faults::with_die_after`]).
pub const DIED_EXIT_CODE: i32 = 3;

/// The faults a device injects; [`Faults::none`] for an honest device.
///
/// Built with const `with_*` methods, one per knob; the knobs combine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Faults {
    /// Bytes of [`FAULT_BYTE`] written just past the end of the last
    /// device-writable data buffer of every request that returns data (IN
    /// and GET_ID), when that range is inside guest memory.
    pub overrun: u32,
    /// After completing a read (used ring updated and the driver notified),
    /// write [`FAULT_BYTE`] over the buffers it returned.
    pub rewrite: bool,
    /// How long after the notification the rewrite comes. The queue's
    /// worker thread sleeps meanwhile: a lying device need not be fast.
    pub rewrite_delay: Duration,
    /// Added to the used length of every answered request (saturating at 0
    /// and `u32::MAX`): the device claims more (or fewer) bytes than it wrote.
    pub used_len_delta: i64,
    /// Flip every bit of the first byte of every read.
    pub corrupt_reads: bool,
    /// Answer the first N requests, then take requests off the available
    /// ring and never answer them.
    pub hang_after: Option<u64>,
    /// Answer the first N requests; on the next one the process exits at once
    /// with [`DIED_EXIT_CODE`] without answering it.
    pub die_after: Option<u64>,
    /// The first `outside.len()` reads and writes that carry data each
    /// name their data at the next of these addresses instead of the
    /// descriptors' own (laid end to end from it), and the device uses them
    /// without checking them against guest memory first, as a device that
    /// trusted its own arithmetic would. The copies go through the guest
    /// memory map all the same, which holds only the regions the frontend
    /// shared: an address outside them reaches nothing, and the request is
    /// answered VIRTIO_BLK_S_IOERR.
    pub outside: Vec<OutsideAddr>,
}

/// Where the [`outside`](Faults::with_outside) fault points a request's
/// data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum OutsideAddr {
    /// The first byte past the end of the guest region that holds the
    /// request's first data buffer: the neighbour of the shared memory.
    PastRegionEnd,
    /// This guest address.
    At(u64),
}

impl fmt::Display for OutsideAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PastRegionEnd => f.write_str("end"),
            Self::At(a) => write!(f, "{a:#x}"),
        }
    }
}

/// `end` for [`OutsideAddr::PastRegionEnd`]; an address in hex (`0x...`)
/// or decimal for [`OutsideAddr::At`].
impl FromStr for OutsideAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "end" {
            return Ok(Self::PastRegionEnd);
        }
        let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => s.parse(),
        };
        parsed
            .map(Self::At)
            .map_err(|e| format!("'{s}' is neither 'end' nor an address: {e}"))
    }
}

impl Faults {
    /// An honest device.
    pub const fn none() -> Self {
        Self {
            overrun: 0,
            rewrite: false,
            rewrite_delay: Duration::ZERO,
            used_len_delta: 0,
            corrupt_reads: false,
            hang_after: None,
            die_after: None,
            outside: Vec::new(),
        }
    }

    /// Write `bytes` past the end of each returned data buffer.
    pub const fn with_overrun(mut self, bytes: u32) -> Self {
        self.overrun = bytes;
        self
    }

    /// Rewrite each completed read's buffers `delay` after the notification.
    pub const fn with_rewrite(mut self, delay: Duration) -> Self {
        self.rewrite = true;
        self.rewrite_delay = delay;
        self
    }

    /// Report `delta` more bytes (fewer if negative) than were written.
    pub const fn with_used_len_delta(mut self, delta: i64) -> Self {
        self.used_len_delta = delta;
        self
    }

    /// Corrupt the first byte of every read.
    pub const fn with_corrupt_reads(mut self) -> Self {
        self.corrupt_reads = true;
        self
    }

    /// Stop answering after `requests` requests.
    pub const fn with_hang_after(mut self, requests: u64) -> Self {
        self.hang_after = Some(requests);
        self
    }

    /// Exit the process on the request after `requests` requests.
    pub const fn with_die_after(mut self, requests: u64) -> Self {
        self.die_after = Some(requests);
        self
    }

    /// Point the data of the next reads and writes at `addrs`, one request
    /// each, without checking them first.
    pub fn with_outside(mut self, addrs: impl IntoIterator<Item = OutsideAddr>) -> Self {
        self.outside = addrs.into_iter().collect();
        self
    }

    /// Whether any knob is set.
    pub fn any(&self) -> bool {
        *self != Self::none()
    }

    /// The used length reported for a request that wrote `len` bytes.
    pub(crate) fn used_len(&self, len: u32) -> u32 {
        let lied = i64::from(len).saturating_add(self.used_len_delta);
        u32::try_from(lied.clamp(0, i64::from(u32::MAX))).unwrap_or(u32::MAX)
    }
}
