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
//!
//! Even a lying device writes only inside the guest regions the frontend
//! shared with it: the lies are about the driver's buffers, never about this
//! process's own memory.

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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
