//! Mapping records: a start bit on the first slot of every live
//! allocation (found from any address inside it by a backward scan), and
//! at that slot the original's CPU address and the mapping's packed shape.

#![forbid(unsafe_code)]

use super::{Policy, Pool};
use crate::addr::PhysAddr;
use crate::sync::Ordering;

/// A live mapping found from an address inside it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Located {
    /// First slot of the allocation.
    pub start: u32,
    /// CPU address of the original buffer's first byte.
    pub orig: *mut u8,
    /// Bytes of the mapping.
    pub len: usize,
    /// Bytes from the allocation's start to the bounce address.
    pub pad: usize,
    /// Slots held.
    pub nslots: u32,
    /// Byte offset of the looked-up address from the bounce address
    /// (negative inside the padding).
    pub offset: i64,
}

/// The packed shape of a mapping: length (24 bits), padding (24 bits),
/// slots (16 bits). `PoolConfig::check` keeps every field in range: a
/// mapping is at most 8 MiB and a segment at most 32768 slots.
#[derive(Clone, Copy)]
pub(super) struct Shape(pub(super) u64);

impl Shape {
    pub(super) const fn new(len: usize, pad: usize, nslots: u32) -> Self {
        Shape(len as u64 | (pad as u64) << 24 | (nslots as u64) << 48)
    }
    pub(super) const fn len(self) -> usize {
        (self.0 & 0xff_ffff) as usize
    }
    pub(super) const fn pad(self) -> usize {
        (self.0 >> 24 & 0xff_ffff) as usize
    }
    pub(super) const fn nslots(self) -> u32 {
        (self.0 >> 48) as u32
    }
}

impl<P: Policy> Pool<P> {
    /// Publishes the record at slot `s`: sets its start bit. Called under
    /// the area lock, after the record words are written.
    #[inline]
    pub(super) fn set_start_bit(&self, s: u32) {
        let word = &self.start_bits[(s / 64) as usize];
        let bit = 1u64 << (s % 64);
        if self.start_words_private {
            // Every slot of this word is in the area whose lock is held, so
            // no one else writes it: a plain load and store do, without a
            // locked instruction. Readers only load.
            word.store(word.load(Ordering::Relaxed) | bit, Ordering::Release);
        } else {
            word.fetch_or(bit, Ordering::Release);
        }
    }

    /// Clears the start bit of slot `s` under the area lock; whether it was
    /// set.
    #[inline]
    pub(super) fn clear_start_bit(&self, s: u32) -> bool {
        let word = &self.start_bits[(s / 64) as usize];
        let bit = 1u64 << (s % 64);
        let old = if self.start_words_private {
            // As in `set_start_bit`. Release, not Relaxed: a reader's
            // Acquire load that sees this store must still see the records
            // of the other start bits in the word, published by earlier
            // Release stores that this plain store would otherwise cut
            // from the release sequence (found by the loom model
            // `sync_from_other_thread_private_words`).
            let old = word.load(Ordering::Relaxed);
            word.store(old & !bit, Ordering::Release);
            old
        } else {
            word.fetch_and(!bit, Ordering::Release)
        };
        old & bit != 0
    }

    /// Finds the live mapping that holds physical address `phys`.
    pub(crate) fn locate(&self, phys: PhysAddr) -> Option<Located> {
        if !self.contains(phys) {
            return None;
        }
        let off = phys.0 - self.start.0;
        let slot = (off >> self.slot_shift) as u32;
        let start = self.prev_start(slot)?;
        let shape = Shape(self.shape[start as usize].load(Ordering::Relaxed));
        if slot >= start + shape.nslots() {
            return None;
        }
        let bounce = ((start as u64) << self.slot_shift) + shape.pad() as u64;
        Some(Located {
            start,
            orig: self.orig[start as usize].load(Ordering::Relaxed),
            len: shape.len(),
            pad: shape.pad(),
            nslots: shape.nslots(),
            offset: off as i64 - bounce as i64,
        })
    }

    /// The nearest slot at or below `slot` whose start bit is set.
    pub(super) fn prev_start(&self, slot: u32) -> Option<u32> {
        let mut w = (slot / 64) as usize;
        let mut bits = self.start_bits[w].load(Ordering::Acquire) & (u64::MAX >> (63 - slot % 64));
        loop {
            if bits != 0 {
                return Some(w as u32 * 64 + 63 - bits.leading_zeros());
            }
            if w == 0 {
                return None;
            }
            w -= 1;
            bits = self.start_bits[w].load(Ordering::Acquire);
        }
    }
}
