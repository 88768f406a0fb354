//! Guard bytes of the misuse checker (feature `checker`): a known pattern
//! in the bytes of a mapping's slots that are not the mapping's own (the
//! padding before the bounce address and the tail after its last byte, up
//! to the end of its last slot), written at map time and read back at
//! `sync_for_cpu` and unmap. A device that wrote outside its mapping
//! changed one of them.
//!
//! Those bytes belong to the mapping's allocation alone (the `Policy`
//! contract) and nothing else reads or writes them: the map copies only
//! the mapping's bytes in, the unmap only those out.

use super::{Policy, Pool};
use crate::addr::PhysAddr;

/// The guard pattern: a byte a device that zero-fills or copies data is
/// unlikely to write by chance, varied with its position so that a shifted
/// copy of the pattern does not pass.
const fn pattern(i: usize) -> u8 {
    0xa5 ^ (i as u8).wrapping_mul(0x3b)
}

/// Changed guard bytes in one region: the first one's offset from the
/// bounce address (negative in the padding) and how many changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Scribble {
    pub(crate) offset: i64,
    pub(crate) len: usize,
}

impl<P: Policy> Pool<P> {
    /// The two guard regions of the streaming mapping whose bounce address
    /// is `phys`: `(start, len)` pool offsets of the padding and the tail,
    /// and the bounce address's pool offset. `None` if `phys` is not the
    /// start of a live streaming mapping.
    fn guard_regions(&self, phys: PhysAddr) -> Option<([(usize, usize); 2], usize)> {
        let loc = self.locate(phys)?;
        if loc.offset != 0 || loc.orig.is_null() {
            return None;
        }
        let first = self.slot_offset(loc.start);
        let bounce = first + loc.pad;
        let end = first + ((loc.nslots as usize) << self.slot_shift());
        let tail = bounce + loc.len;
        Some(([(first, loc.pad), (tail, end - tail)], bounce))
    }

    /// Writes the guard pattern around the streaming mapping at `phys`;
    /// whether there was one.
    pub(crate) fn guard_fill(&self, phys: PhysAddr) -> bool {
        let Some((regions, _)) = self.guard_regions(phys) else {
            return false;
        };
        for (start, len) in regions {
            for i in start..start + len {
                // SAFETY: `i` is inside the slots of a live allocation of
                // this pool (`guard_regions` took them from its record, and
                // they end at its last slot, inside the pool), outside the
                // mapping's own bytes: no original, copy or CPU reference
                // reaches them; only a misbehaving device writes there,
                // which a byte store tolerates.
                unsafe { self.slot_ptr(i).write_volatile(pattern(i)) };
            }
        }
        true
    }

    /// Reads back the guard bytes of the streaming mapping at `phys`: the
    /// changed bytes of the padding and of the tail, and writes the pattern
    /// again so that one scribble is reported once.
    pub(crate) fn guard_check(&self, phys: PhysAddr) -> [Option<Scribble>; 2] {
        let mut found = [None, None];
        let Some((regions, bounce)) = self.guard_regions(phys) else {
            return found;
        };
        for (k, (start, len)) in regions.into_iter().enumerate() {
            for i in start..start + len {
                let p = self.slot_ptr(i);
                // SAFETY: as in `guard_fill`: a byte of a live allocation's
                // slots outside the mapping, which only a device may have
                // written; a volatile byte load reads whatever it holds.
                let b = unsafe { p.read_volatile() };
                if b != pattern(i) {
                    let s = found[k].get_or_insert(Scribble {
                        offset: i as i64 - bounce as i64,
                        len: 0,
                    });
                    s.len += 1;
                    // SAFETY: as the load above, a store to the same byte.
                    unsafe { p.write_volatile(pattern(i)) };
                }
            }
        }
        found
    }
}
