//! Placement without data: [`SlotPool`], the allocator of a real pool
//! driven by sizes and addresses alone, for replaying kernel traces.

#![forbid(unsafe_code)]

use core::ptr;

use crate::addr::{DmaAddr, DmaMask, PhysAddr};
use crate::device::Device;
use crate::error::{Error, PoolProblem};
use crate::map::MapOptions;
use crate::pool::{Hiwater, Policy, Pool, PoolConfig};
use crate::stats::Stats;
use crate::translate::Offset;

/// A pool whose mappings carry no data: a map chooses slots exactly as a
/// bounce of the same size, original address, masks and CPU would (the
/// same request, the same policy, the same areas, the same counters), and
/// copies nothing. A kernel trace says where every bounce went and when it
/// was released, but not what it held; replaying it needs the placement
/// and the counts only, millions of times over, at the allocator's speed.
///
/// The device sees the pool at a device address chosen at construction
/// (the kernel's pool base, when a replay knows it), so that alignment and
/// segment boundaries judge every slot as they did in the kernel.
/// `io_tlb_used_hiwater` is Linux's exact pool-wide mark
/// ([`Hiwater::Exact`]).
///
/// ```
/// use swiotlb::sim::{MapParams, SlotPool};
/// use swiotlb::{NextFit, PhysAddr, PoolConfig};
///
/// // Linux's default pool, 32768 slots in 4 areas, seen at 0xbbe0_0000.
/// let pool = SlotPool::<NextFit>::new(32768, PoolConfig::with_areas(4), 0xbbe0_0000).unwrap();
/// let nvme = MapParams {
///     orig: PhysAddr(0x1_2345_6a10),
///     min_align_mask: 0xfff,
///     cpu: 2,
///     ..MapParams::default()
/// };
/// let p = pool.map(3000, nvme).unwrap();
/// assert_eq!(p.dma.0 & 0xfff, 0xa10);
/// assert_eq!(p.nslots, 2);
/// assert_eq!(pool.stats().io_tlb_used, 2);
/// pool.unmap(p).unwrap();
/// assert_eq!(pool.stats().io_tlb_used, 0);
/// assert_eq!(pool.stats().io_tlb_used_hiwater, 2);
/// ```
pub struct SlotPool<P: Policy> {
    pool: Pool<P>,
    translate: Offset,
}

/// Where [`SlotPool::map`] placed a mapping: what [`SlotPool::unmap`]
/// gives back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Placed {
    /// The bounce address as the device sees it: the pool's device base
    /// plus [`Placed::offset`].
    pub dma: DmaAddr,
    /// The bounce address as an offset into the pool.
    pub offset: u64,
    /// The allocation's first slot (padding included).
    pub start: u32,
    /// Slots the allocation holds.
    pub nslots: u32,
    size: usize,
}

impl<P: Policy> SlotPool<P> {
    /// A pool of `nslabs` slots of `config`'s geometry that the device
    /// sees at device address `dma_base`. Its memory is heap memory that
    /// is never touched (a large pool costs address space, not RAM).
    ///
    /// # Errors
    /// [`Error::InvalidPool`]: no slots, a bad geometry, a size that does
    /// not fit the address space, or a base that is not slot aligned, is
    /// 0, or leaves no room for the pool below the top of the device
    /// address space.
    pub fn new(nslabs: u32, config: PoolConfig, dma_base: u64) -> Result<Self, Error> {
        let bad = |problem| Error::InvalidPool {
            base: PhysAddr(dma_base),
            problem,
        };
        let slot = 1u64
            .checked_shl(config.slot_shift)
            .filter(|s| *s > 1)
            .ok_or(bad(PoolProblem::BadGeometry))?;
        let len = u64::from(nslabs)
            .checked_mul(slot)
            .filter(|l| *l > 0)
            .ok_or(bad(PoolProblem::TooManySlots))?;
        if dma_base == 0 || dma_base.checked_add(len).is_none() {
            return Err(bad(PoolProblem::TooManySlots));
        }
        if dma_base & (slot - 1) != 0 {
            return Err(bad(PoolProblem::Unaligned));
        }
        let len = usize::try_from(len).map_err(|_| bad(PoolProblem::TooManySlots))?;
        let pool = Pool::new_heap(len, config)?.with_hiwater(Hiwater::Exact);
        let translate = Offset::new(pool.start(), DmaAddr(dma_base));
        Ok(Self { pool, translate })
    }

    /// The pool, for its geometry and its slots' state.
    pub fn pool(&self) -> &Pool<P> {
        &self.pool
    }

    /// The pool's statistics (failed maps counted under their reasons).
    pub fn stats(&self) -> Stats {
        self.pool.stats()
    }

    /// Places a mapping of `size` bytes as Linux's `swiotlb_tbl_map_single`
    /// would for a device with `params.min_align_mask`, the original at
    /// `params.orig`, the call's `params.alloc_align_mask`, from CPU
    /// `params.cpu` (the search starts in area `cpu % nareas`).
    ///
    /// # Errors
    /// As a bounce: [`Error::PoolFull`], [`Error::TooLarge`],
    /// [`Error::ZeroSize`], [`Error::AlignmentImpossible`],
    /// [`Error::PaddingTooLarge`]; each counted in the statistics. A
    /// `min_align_mask` that is not `2^n - 1` is
    /// [`Error::AlignmentImpossible`].
    pub fn map(&self, size: usize, params: super::MapParams) -> Result<Placed, Error> {
        let m = params.min_align_mask;
        let r = if m & m.wrapping_add(1) != 0 {
            Err(Error::AlignmentImpossible {
                align_mask: params.alloc_align_mask,
                min_align_mask: m,
            })
        } else {
            self.place(size, params)
        };
        if let Err(e) = &r {
            self.pool.count_failure(e);
        }
        r
    }

    fn place(&self, size: usize, params: super::MapParams) -> Result<Placed, Error> {
        let dev = Device::new(DmaMask::BITS_64)
            .with_force_bounce()
            .with_min_align_mask(params.min_align_mask)
            .with_translate(self.translate);
        let opts = MapOptions {
            alloc_align_mask: params.alloc_align_mask,
            area_hint: Some(params.cpu),
        };
        // No original buffer: the record holds a null pointer, which no
        // path of this type ever follows (it never syncs, copies or
        // unmaps through the pool's bounce API; `unmap` below releases
        // the slots alone).
        let b = self
            .pool
            .bounce_alloc(&dev, params.orig, ptr::null_mut(), size, opts)?;
        Ok(Placed {
            dma: b.dma,
            offset: b.phys - self.pool.start(),
            start: b.start,
            nslots: b.nslots,
            size,
        })
    }

    /// Gives back the slots of `placed`.
    ///
    /// # Errors
    /// [`Error::NotMapped`] if they are not held (unmapped already, or
    /// placed by another pool).
    pub fn unmap(&self, placed: Placed) -> Result<(), Error> {
        // The map counted `size` bytes as copied in; none were.
        self.pool
            .release(placed.start, placed.nslots, placed.dma, 0, placed.size)
    }
}

impl<P: Policy> core::fmt::Debug for SlotPool<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SlotPool")
            .field("nslabs", &self.pool.nslabs())
            .field("nareas", &self.pool.nareas())
            .field("policy", &self.pool.policy_name())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{MapParams, Simulator};
    use crate::{Direction, Fast, NextFit};

    /// Every placement and counter equals a data-carrying simulator's on
    /// the same sequence (the simulator sees the pool at `SIM_DMA_BASE`).
    fn same_as_simulator<P: Policy>() {
        let config = PoolConfig::with_areas(4);
        let slots = SlotPool::<P>::new(1024, config, crate::sim::SIM_DMA_BASE).unwrap();
        let mut sim = Simulator::<P, u32>::new(1024, config).unwrap();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut live = alloc::vec::Vec::new();
        // Miri runs the sequence's start: the slot pool adds no unsafe
        // code; the simulator's copies are checked by its own tests.
        let ops = if cfg!(miri) { 150 } else { 3000 };
        for id in 0..ops {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 3 == 0 && !live.is_empty() {
                let (id, p) = live.swap_remove((x as usize / 3) % live.len());
                slots.unmap(p).unwrap();
                sim.unmap(&id).unwrap();
                continue;
            }
            let params = MapParams {
                orig: PhysAddr(x & 0xffff_fff0),
                min_align_mask: if x & 4 == 0 { 0xfff } else { 0 },
                cpu: (x >> 40) as usize,
                ..MapParams::default()
            };
            let size = 1 + (x >> 20) as usize % 20_000;
            match (
                slots.map(size, params),
                sim.map_with(id, size, Direction::ToDevice, params),
            ) {
                (Ok(p), Ok(b)) => {
                    assert_eq!(p.offset, sim.offset_of(&b), "map {id}");
                    assert_eq!((p.start, p.nslots), (b.start, b.nslots));
                    live.push((id, p));
                }
                (Err(a), Err(crate::sim::SimError::Engine(b))) => assert_eq!(a, b),
                (a, b) => panic!("map {id}: {a:?} against {b:?}"),
            }
            let (s, t) = (slots.stats(), sim.stats());
            assert_eq!(s.io_tlb_used, t.io_tlb_used);
            assert_eq!(s.io_tlb_used_hiwater, t.io_tlb_used_hiwater);
        }
        for (_, p) in live {
            slots.unmap(p).unwrap();
            assert_eq!(slots.unmap(p), Err(Error::NotMapped { dma: p.dma }));
        }
        assert_eq!(slots.stats().io_tlb_used, 0);
    }

    #[test]
    fn places_as_the_simulator_places() {
        same_as_simulator::<NextFit>();
        same_as_simulator::<Fast>();
    }

    #[test]
    fn bad_bases_and_sizes_are_refused() {
        let c = PoolConfig::default();
        assert!(SlotPool::<NextFit>::new(0, c, 1 << 32).is_err());
        assert!(SlotPool::<NextFit>::new(128, c, 0).is_err());
        assert!(SlotPool::<NextFit>::new(128, c, 0x800 + 1).is_err());
        assert!(SlotPool::<NextFit>::new(128, c, u64::MAX - 0x7ff).is_err());
        let p = SlotPool::<NextFit>::new(128, c, 0x800).unwrap();
        assert_eq!(
            p.map(4096, MapParams::default()).unwrap().dma,
            DmaAddr(0x1000)
        );
        let odd = MapParams {
            min_align_mask: 0x5,
            ..MapParams::default()
        };
        assert!(matches!(
            p.map(10, odd),
            Err(Error::AlignmentImpossible { .. })
        ));
    }
}
