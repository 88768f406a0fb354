//! Areas: each has a lock and the policy's state; allocation tries the
//! areas from a hint on, and release gives slots back under the lock.

#![forbid(unsafe_code)]

use super::policy::{AreaGeom, Request};
use super::record::Shape;
use super::{Policy, Pool};
use crate::addr::DmaAddr;
use crate::error::{Error, Result};
use crate::sync::{AtomicU64, Mutex, Ordering};

/// What an area's lock guards: the policy's state and the area's counts.
pub(super) struct AreaState<A> {
    pub(super) policy: A,
    pub(super) used: u32,
    /// The most slots this area held at once since the last reset.
    pub(super) hiwater: u32,
    /// Bytes copied in at map time and back at unmap, counted under the
    /// lock the map and unmap take anyway (syncs use the area's atomics).
    pub(super) mapped_to_device: u64,
    pub(super) unmapped_from_device: u64,
}

/// One area: its place in the pool, its lock, and the byte counts syncs
/// add to without it.
pub(super) struct Area<A> {
    pub(super) geom: AreaGeom,
    pub(super) state: Mutex<AreaState<A>>,
    pub(super) bytes_to_device: AtomicU64,
    pub(super) bytes_from_device: AtomicU64,
}

impl<P: Policy> Pool<P> {
    /// Finds slots for `req`, starting in area `hint % nareas` and falling
    /// back to the others in turn (Linux `swiotlb_find_slots`), and records
    /// the mapping at the allocation's first slot.
    pub(crate) fn alloc(
        &self,
        req: &Request,
        hint: usize,
        orig: *mut u8,
        len: usize,
        pad: usize,
    ) -> Option<u32> {
        // A streaming map copies `len` bytes in right after this.
        self.alloc_counted(req, hint, orig, len, pad, len)
    }

    /// [`Pool::alloc`], counting `copied` bytes as bounced to the device
    /// (`len` for a streaming map, 0 for a coherent allocation, which is
    /// never copied).
    pub(super) fn alloc_counted(
        &self,
        req: &Request,
        hint: usize,
        orig: *mut u8,
        len: usize,
        pad: usize,
        copied: usize,
    ) -> Option<u32> {
        let s = self.in_areas(hint, req.nslots, |geom, st| {
            let s = P::alloc(&mut st.policy, geom, req)?;
            st.used += req.nslots;
            st.hiwater = st.hiwater.max(st.used);
            st.mapped_to_device += copied as u64;
            // INVARIANT: the record is written before the start bit that
            // publishes it (Release), under the area lock.
            self.orig[s as usize].store(orig, Ordering::Relaxed);
            self.shape[s as usize].store(Shape::new(len, pad, req.nslots).0, Ordering::Relaxed);
            self.set_start_bit(s);
            Some(s)
        })?;
        if self.exact_hiwater {
            let used =
                self.used.fetch_add(req.nslots as usize, Ordering::Relaxed) + req.nslots as usize;
            // Read before writing: once warm, the high-water mark rarely
            // moves, and a plain load keeps its cache line shared between
            // CPUs instead of bouncing it.
            if used > self.hiwater.load(Ordering::Relaxed) {
                self.hiwater.fetch_max(used, Ordering::Relaxed);
            }
        }
        Some(s)
    }

    /// Runs `f` under each area's lock in turn, from area `hint % nareas`
    /// on, skipping areas with fewer than `nslots` free slots, until it
    /// gives `Some` (Linux `swiotlb_find_slots` walking the areas).
    #[inline(always)]
    pub(super) fn in_areas<R>(
        &self,
        hint: usize,
        nslots: u32,
        mut f: impl FnMut(&AreaGeom, &mut AreaState<P::Area>) -> Option<R>,
    ) -> Option<R> {
        let nareas = self.areas.len();
        let first = hint & (nareas - 1);
        let mut i = first;
        loop {
            let area = &self.areas[i];
            let mut st = area.state.lock();
            if nslots <= area.geom.nslabs - st.used {
                if let Some(r) = f(&area.geom, &mut st) {
                    return Some(r);
                }
            }
            drop(st);
            i = (i + 1) & (nareas - 1);
            if i == first {
                return None;
            }
        }
    }

    /// Gives back the allocation starting at slot `start`, which must be
    /// live, counting `copied_back` bytes copied from the slots at unmap
    /// and taking back `uncopied` bytes counted at map time but never
    /// copied (a map that failed after allocating). Returns
    /// `Err(NotMapped)` if it is not live (a double unmap).
    pub(crate) fn release(
        &self,
        start: u32,
        nslots: u32,
        dma: DmaAddr,
        copied_back: usize,
        uncopied: usize,
    ) -> Result {
        #[cfg(swiotlb_loom)]
        self.releasing.fetch_add(1, Ordering::SeqCst);
        let r = self.release_slots(start, nslots, dma, copied_back, uncopied);
        // Still inside the pool after the unlock that may have left it
        // idle: the loom models check that no pool is freed here.
        #[cfg(swiotlb_loom)]
        self.releasing.fetch_sub(1, Ordering::SeqCst);
        r
    }

    /// The body of [`Pool::release`].
    #[inline(always)]
    pub(super) fn release_slots(
        &self,
        start: u32,
        nslots: u32,
        dma: DmaAddr,
        copied_back: usize,
        uncopied: usize,
    ) -> Result {
        let area = self.area_of(start);
        let mut st = area.state.lock();
        if !self.clear_start_bit(start) {
            return Err(Error::NotMapped { dma });
        }
        if self.zero_on_free {
            // Still under the lock and before the policy has the slots
            // back: no one else can hold them while they are zeroed.
            self.scrub(start, nslots);
        }
        P::free(&mut st.policy, &area.geom, start, nslots);
        st.used -= nslots;
        st.unmapped_from_device += copied_back as u64;
        st.mapped_to_device -= uncopied as u64;
        if self.exact_hiwater {
            self.used.fetch_sub(nslots as usize, Ordering::Relaxed);
        }
        // The unlock is the last touch of the pool: it may leave the pool
        // idle, and a growing tlb may free an idle pool (after waiting for
        // the releases in flight: `IoTlb::guard_release`).
        drop(st);
        Ok(())
    }

    pub(super) fn area_of(&self, slot: u32) -> &Area<P::Area> {
        let i = ((slot / self.area_nslabs) as usize).min(self.areas.len() - 1);
        &self.areas[i]
    }
}
