//! Operations into the real allocator: slots taken and given back in a
//! [`SlotPool`] of the kernel's geometry, counted as Linux counts them.

use std::collections::HashMap;

use swiotlb::sim::{MapParams, Placed, SlotPool};
use swiotlb::{PhysAddr, PoolConfig};

use super::pair::Op;
use super::report::{Compared, Growth, GrowthEvent, Marker, Placement, Timeline};

/// How a replay may grow: our growing tlb's rules, in trace time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GrowPlan {
    pub(crate) grow_by: u32,
    pub(crate) max_slots: u64,
    pub(crate) idle_ns: u64,
}

/// Where grown pools are seen: far from any kernel pool, 4 GiB apart.
const GROWN_BASE: u64 = 1 << 44;

struct Held<P: swiotlb::Policy> {
    pool: SlotPool<P>,
    /// Stable number (pools are given back from the middle of the list).
    id: u32,
    slots: u64,
    used: u64,
    /// Trace time since which the pool has held nothing.
    empty_since: u64,
}

struct Live {
    placed: Option<(u32, Placed)>,
    dev: u16,
    /// When the replay failed to place it, if it did.
    failed: Option<u64>,
}

/// Per-device counts.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DevCount {
    pub(crate) mappings: u64,
    pub(crate) bytes: u64,
    pub(crate) used: u64,
    pub(crate) hiwater: u64,
    pub(crate) failures: u64,
    pub(crate) kernel_failures: u64,
}

/// The replay's allocator side.
pub(crate) struct Exec<P: swiotlb::Policy> {
    pools: Vec<Held<P>>,
    next_pool: u32,
    plan: Option<GrowPlan>,
    grow_config: PoolConfig,
    /// The kernel's pool, `[base, end)`, when its log gives it:
    /// placements are compared against the kernel's.
    kernel_pool: Option<(u64, u64)>,
    min_align: Vec<u64>,
    live: HashMap<u32, Live>,
    pub(crate) devs: Vec<DevCount>,
    pub(crate) used: u64,
    pub(crate) hiwater: u64,
    mark_hiwater: u64,
    pub(crate) mappings: u64,
    pub(crate) bytes: u64,
    pub(crate) failures: u64,
    pub(crate) kernel_failures: u64,
    pub(crate) compared: Compared,
    pub(crate) placement: Placement,
    pub(crate) markers: Vec<Marker>,
    pub(crate) growth: Option<Growth>,
    total_slots: u64,
    timeline: Option<Timeline>,
    /// The first pool's slots, held or not, while a timeline is kept.
    occupancy: Vec<u64>,
    /// When the first pool held the most, how many, and its occupancy.
    peak: Option<(u64, u64, Vec<u64>)>,
    now: u64,
}

impl<P: swiotlb::Policy> Exec<P> {
    /// A replay on one pool of `nslabs` slots in `nareas` areas, seen at
    /// `base`; with `plan`, it grows as our growing tlb would.
    pub(crate) fn new(
        nslabs: u32,
        nareas: u32,
        base: u64,
        compare: bool,
        min_align: Vec<u64>,
        plan: Option<GrowPlan>,
        timeline: bool,
    ) -> Result<Self, swiotlb::Error> {
        let first = SlotPool::new(nslabs, PoolConfig::with_areas(nareas), base)?;
        let slots = u64::from(first.pool().nslabs());
        let growth = plan.map(|p| Growth {
            start_slots: slots,
            grow_by_slots: u64::from(p.grow_by),
            max_slots: p.max_slots,
            idle_ms: p.idle_ns / 1_000_000,
            ..Growth::default()
        });
        let timeline = timeline.then(|| Timeline {
            pool_slots: vec![(0, slots)],
            ..Timeline::default()
        });
        Ok(Exec {
            pools: vec![Held {
                pool: first,
                id: 0,
                slots,
                used: 0,
                empty_since: 0,
            }],
            next_pool: 1,
            plan,
            grow_config: PoolConfig::default(),
            kernel_pool: compare.then(|| (base, base + (slots << swiotlb::config::IO_TLB_SHIFT))),
            occupancy: if timeline.is_some() {
                vec![0; (slots as usize).div_ceil(64)]
            } else {
                Vec::new()
            },
            timeline,
            min_align,
            live: HashMap::new(),
            devs: Vec::new(),
            used: 0,
            hiwater: 0,
            mark_hiwater: 0,
            mappings: 0,
            bytes: 0,
            failures: 0,
            kernel_failures: 0,
            compared: Compared::default(),
            placement: Placement::default(),
            markers: Vec::new(),
            growth,
            total_slots: slots,
            peak: None,
            now: 0,
        })
    }

    /// The first pool (the kernel's).
    pub(crate) fn first_pool(&self) -> &swiotlb::Pool<P> {
        self.pools[0].pool.pool()
    }

    /// Counts a bounce without placing it: a trace that never says when
    /// bounces are released.
    pub(crate) fn count_only(&mut self, dev: u16, size: u64) {
        self.mappings += 1;
        self.bytes += size;
        let d = self.dev(dev);
        d.mappings += 1;
        d.bytes += size;
    }

    /// The first pool's exact high-water mark and use, from the engine.
    pub(crate) fn engine_stats(&self) -> swiotlb::Stats {
        self.pools[0].pool.stats()
    }

    fn dev(&mut self, dev: u16) -> &mut DevCount {
        let i = dev as usize;
        if self.devs.len() <= i {
            self.devs.resize(i + 1, DevCount::default());
        }
        &mut self.devs[i]
    }

    fn mark(&mut self, start: u32, n: u32, held: bool) {
        if self.occupancy.is_empty() {
            return;
        }
        for s in start..start + n {
            let (w, b) = ((s / 64) as usize, s % 64);
            if held {
                self.occupancy[w] |= 1 << b;
            } else {
                self.occupancy[w] &= !(1 << b);
            }
        }
    }

    fn point(&mut self) {
        if let Some(tl) = &mut self.timeline {
            tl.points.push((self.now, self.used));
        }
    }

    /// One operation.
    pub(crate) fn op(&mut self, op: &Op) {
        match *op {
            Op::Map {
                id,
                dev,
                size,
                orig,
                cpu,
                t,
                line,
            } => {
                self.now = t;
                self.map(id, dev, size, orig, cpu, line);
            }
            Op::Resolve { ref ids, ok, t } => {
                self.now = t;
                self.resolve(ids, ok);
            }
            Op::Unmap { id, t } => {
                self.now = t;
                if let Some(l) = self.live.remove(&id) {
                    self.release(l);
                }
                self.shrink();
            }
            Op::Marker { ref text, line, t } => {
                self.now = t;
                if let Some(m) = self.markers.last_mut() {
                    m.io_tlb_used_hiwater = self.mark_hiwater;
                }
                self.mark_hiwater = 0;
                self.markers.push(Marker {
                    text: text.to_string(),
                    line,
                    io_tlb_used: self.used,
                    io_tlb_used_hiwater: 0,
                });
                if let Some(tl) = &mut self.timeline {
                    tl.markers.push((t, text.to_string()));
                }
            }
        }
    }

    fn map(&mut self, id: u32, dev: u16, size: u64, orig: u64, cpu: u32, line: u64) {
        let params = MapParams {
            orig: PhysAddr(orig),
            min_align_mask: self.min_align.get(dev as usize).copied().unwrap_or(0),
            cpu: cpu as usize,
            ..MapParams::default()
        };
        let size_us = usize::try_from(size).unwrap_or(usize::MAX);
        self.mappings += 1;
        self.bytes += size;
        {
            let d = self.dev(dev);
            d.mappings += 1;
            d.bytes += size;
        }
        let mut placed = None;
        for h in &mut self.pools {
            if let Ok(p) = h.pool.map(size_us, params) {
                placed = Some((h.id, p));
                break;
            }
        }
        if placed.is_none() {
            placed = self.grow(size_us, params, line);
        }
        let Some((pool, p)) = placed else {
            // Drawn once per failed map, when it is settled (a list's
            // entries fail as one map).
            self.live.insert(
                id,
                Live {
                    placed: None,
                    dev,
                    failed: Some(self.now),
                },
            );
            return;
        };
        let n = u64::from(p.nslots);
        self.used += n;
        self.hiwater = self.hiwater.max(self.used);
        self.mark_hiwater = self.mark_hiwater.max(self.used);
        let d = self.dev(dev);
        d.used += n;
        d.hiwater = d.hiwater.max(d.used);
        if let Some(h) = self.pools.iter_mut().find(|h| h.id == pool) {
            h.used += n;
        }
        if pool == 0 {
            self.mark(p.start, p.nslots, true);
            let first_used = self.pools[0].used;
            if self.timeline.is_some() && self.peak.as_ref().is_none_or(|(_, u, _)| first_used > *u)
            {
                self.peak = Some((self.now, first_used, self.occupancy.clone()));
            }
        }
        self.point();
        self.live.insert(
            id,
            Live {
                placed: Some((pool, p)),
                dev,
                failed: None,
            },
        );
    }

    /// Adds a pool if the plan allows, and places the map in it.
    fn grow(&mut self, size: usize, params: MapParams, line: u64) -> Option<(u32, Placed)> {
        let plan = self.plan?;
        let slots = u64::from(plan.grow_by);
        if self.total_slots + slots > plan.max_slots {
            return None;
        }
        let id = self.next_pool;
        let base = GROWN_BASE + (u64::from(id) << 32);
        let pool = SlotPool::new(plan.grow_by, self.grow_config, base).ok()?;
        let p = pool.map(size, params).ok()?;
        self.next_pool += 1;
        self.total_slots += slots;
        self.pools.push(Held {
            pool,
            id,
            slots,
            used: 0,
            empty_since: self.now,
        });
        if let Some(g) = &mut self.growth {
            g.pools_added += 1;
            g.peak_slots = g.peak_slots.max(self.total_slots);
            g.events.push(GrowthEvent {
                t_ns: self.now,
                line,
                what: "added",
                slots,
                total_slots: self.total_slots,
            });
        }
        if let Some(tl) = &mut self.timeline {
            tl.pool_slots.push((self.now, self.total_slots));
        }
        Some((id, p))
    }

    /// Gives back grown pools that have been empty for the idle time.
    fn shrink(&mut self) {
        let Some(plan) = self.plan else { return };
        let now = self.now;
        let before = self.pools.len();
        let mut removed = Vec::new();
        self.pools.retain(|h| {
            let idle =
                h.id != 0 && h.used == 0 && now.saturating_sub(h.empty_since) >= plan.idle_ns;
            if idle {
                removed.push(h.slots);
            }
            !idle
        });
        if self.pools.len() == before {
            return;
        }
        for slots in removed {
            self.total_slots -= slots;
            if let Some(g) = &mut self.growth {
                g.pools_removed += 1;
                g.events.push(GrowthEvent {
                    t_ns: now,
                    line: 0,
                    what: "removed",
                    slots,
                    total_slots: self.total_slots,
                });
            }
            if let Some(tl) = &mut self.timeline {
                tl.pool_slots.push((now, self.total_slots));
            }
        }
    }

    fn release(&mut self, l: Live) {
        let Some((pool, p)) = l.placed else { return };
        let n = u64::from(p.nslots);
        let now = self.now;
        if let Some(h) = self.pools.iter_mut().find(|h| h.id == pool) {
            // Slots this replay placed in a pool it still holds.
            h.pool
                .unmap(p)
                .expect("a replay gives back only what it placed");
            h.used -= n;
            if h.used == 0 {
                h.empty_since = now;
            }
        }
        if pool == 0 {
            self.mark(p.start, p.nslots, false);
        }
        self.used -= n;
        self.dev(l.dev).used -= n;
        self.point();
    }

    fn resolve(&mut self, ids: &[(u32, u64)], ok: bool) {
        let mut failed_at: Option<u64> = None;
        let mut dev = None;
        for (id, _) in ids {
            if let Some(l) = self.live.get(id) {
                if let Some(t) = l.failed {
                    failed_at = Some(failed_at.map_or(t, |f| f.min(t)));
                }
                dev = Some(l.dev);
            }
        }
        let Some(dev) = dev else { return };
        let failed = failed_at.is_some();
        if let Some(t) = failed_at {
            self.failures += 1;
            self.dev(dev).failures += 1;
            if let Some(tl) = &mut self.timeline {
                tl.failures.push(t);
            }
        }
        if !ok {
            self.kernel_failures += 1;
            self.dev(dev).kernel_failures += 1;
        }
        match (ok, failed) {
            (false, true) => self.compared.both += 1,
            (false, false) => self.compared.only_kernel += 1,
            (true, true) => self.compared.only_replay += 1,
            (true, false) => {}
        }
        if !ok || failed {
            // The map failed as a whole: the kernel gave back what it had
            // taken, or the replay's driver would have, as Linux unmaps
            // the entries of a list that failed part way.
            for (id, _) in ids {
                if let Some(l) = self.live.remove(id) {
                    self.release(l);
                }
            }
            return;
        }
        let Some((lo, hi)) = self.kernel_pool else {
            return;
        };
        for &(id, kernel) in ids {
            if kernel == u64::MAX {
                continue;
            }
            if kernel < lo || kernel >= hi {
                // A pool the kernel grew (CONFIG_SWIOTLB_DYNAMIC), or a
                // restricted one: not the boot pool the replay models.
                self.placement.outside_pool += 1;
                continue;
            }
            if let Some(Live {
                placed: Some((0, p)),
                ..
            }) = self.live.get(&id)
            {
                self.placement.compared += 1;
                self.placement.exact += u64::from(p.dma.0 == kernel);
            }
        }
    }

    /// At the end of the trace: the last marker's mark, and the failed
    /// bounces never settled.
    pub(crate) fn finish(&mut self) -> Option<Timeline> {
        if let Some(m) = self.markers.last_mut() {
            m.io_tlb_used_hiwater = self.mark_hiwater;
        }
        let unsettled: Vec<(u16, u64)> = self
            .live
            .values()
            .filter_map(|l| Some((l.dev, l.failed?)))
            .collect();
        for (dev, t) in unsettled {
            self.failures += 1;
            self.dev(dev).failures += 1;
            if let Some(tl) = &mut self.timeline {
                tl.failures.push(t);
            }
        }
        self.live.retain(|_, l| l.failed.is_none());
        if let Some(tl) = &mut self.timeline {
            tl.failures.sort_unstable();
        }
        let mut tl = self.timeline.take()?;
        if let Some((t, used, words)) = self.peak.take() {
            let bits = (0..self.pools[0].slots)
                .map(|s| words[(s / 64) as usize] >> (s % 64) & 1 == 1)
                .collect();
            tl.peak = Some((t, used, bits));
        }
        Some(tl)
    }
}
