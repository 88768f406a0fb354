//! The second pass: trace events into allocator operations, by Linux's
//! order of events.
//!
//! - `swiotlb_bounced` comes before the slots are taken: the replay takes
//!   them there ([`Op::Map`]), from the event's CPU.
//! - `dma_map_page` comes after the map: it settles the bounces of its
//!   task and device with the same size and original ([`Op::Resolve`]),
//!   or fails them (`dma_addr=ffffffffffffffff`), which gives their slots
//!   back.
//! - `dma_map_sg` settles one bounce per bounced entry; `dma_map_sg_err`
//!   fails them.
//! - `dma_unmap_page` (after the slots are freed) and `dma_unmap_sg`
//!   (before) release them ([`Op::Unmap`]); a list mapped twice and
//!   unmapped twice pairs first in, first out.

use std::collections::{HashMap, VecDeque};

use super::survey::Learned;
use crate::event::{Device, Event, EventKind, Record, Target};

/// One allocator operation of a replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// Take slots for a bounce (`swiotlb_bounced`).
    Map {
        id: u32,
        dev: u16,
        size: u64,
        /// The original's CPU physical address.
        orig: u64,
        cpu: u32,
        t: u64,
        line: u64,
    },
    /// The kernel's map of these bounces finished: `ok`, with each one's
    /// bounce address when the trace shows it (`u64::MAX` if not), or
    /// failed.
    Resolve {
        ids: Box<[(u32, u64)]>,
        ok: bool,
        t: u64,
    },
    /// Give the slots of a bounce back.
    Unmap { id: u32, t: u64 },
    /// A `tracing_mark_write` line.
    Marker { text: Box<str>, line: u64, t: u64 },
}

/// Counts of what did not pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Unpaired {
    /// `swiotlb_bounced` events no map event settled by the end of the
    /// trace (their slots stay held to the end).
    pub bounces: u64,
    /// Unmaps of mappings the trace never showed being made (mapped
    /// before it began, or lost with a full ring buffer).
    pub unmaps: u64,
    /// Map events paired with a bounce by size alone, because no bounce
    /// of their task and device had their original's address.
    pub loose_pairs: u64,
    /// Failed maps that bounced nothing: not swiotlb's failures (an
    /// IOMMU, an unreachable address without a pool).
    pub other_map_errors: u64,
    /// A bounce address mapped again while the trace still held it live:
    /// its unmap was lost; the older mapping is released then.
    pub reused_addresses: u64,
    /// Lost-events notes in the trace.
    pub lost_notes: u64,
}

/// Who made a map, as the pairing of its events sees it: the task, not
/// the CPU (a task may move between its bounce and its map event), except
/// for PID 0, which is every CPU's idle task, and under which interrupt
/// handlers on different CPUs map at the same time: there the CPU tells
/// them apart (an interrupt does not move).
pub(crate) fn task(e: &Event) -> u64 {
    if e.pid == 0 {
        1 << 32 | u64::from(e.cpu)
    } else {
        u64::from(e.pid)
    }
}

/// The bounces of one mapped list.
type Bounces = Box<[u32]>;

/// Devices by name: their index and what the survey learned.
pub(crate) type Devices = HashMap<Device, (u16, Learned)>;

struct Pending {
    id: u32,
    size: u64,
    orig: u64,
}

/// The pairing state: everything that is live in the kernel's view.
pub(crate) struct Pairer {
    devices: Devices,
    /// When the trace has no `swiotlb_bounced` events but the pool is
    /// known: maps whose address falls in it bounced.
    fallback: Option<(u64, u64)>,
    pending: HashMap<(u64, u16), VecDeque<Pending>>,
    single: HashMap<(u16, u64), u32>,
    direct: HashMap<(u16, u64), u32>,
    /// Lists live by device and original addresses, each with its
    /// bounces, oldest first.
    lists: HashMap<(u16, Box<[u64]>), VecDeque<Bounces>>,
    next_id: u32,
    pub(crate) unpaired: Unpaired,
    t0: Option<u64>,
}

impl Pairer {
    /// `devices` gives each device its index and learned facts; devices
    /// not in it are added as they come, with nothing learned.
    pub(crate) fn new(
        devices: HashMap<Device, (u16, Learned)>,
        fallback: Option<(u64, u64)>,
    ) -> Self {
        Pairer {
            devices,
            fallback,
            pending: HashMap::new(),
            single: HashMap::new(),
            direct: HashMap::new(),
            lists: HashMap::new(),
            next_id: 0,
            unpaired: Unpaired::default(),
            t0: None,
        }
    }

    /// The devices, by index.
    pub(crate) fn devices(&self) -> Vec<(Device, Learned)> {
        let mut v: Vec<_> = self
            .devices
            .iter()
            .map(|(d, (i, l))| (*i, d.clone(), *l))
            .collect();
        v.sort_by_key(|x| x.0);
        v.into_iter().map(|(_, d, l)| (d, l)).collect()
    }

    fn device(&mut self, d: &Device) -> (u16, Learned) {
        if let Some(x) = self.devices.get(d) {
            return *x;
        }
        let i = self.devices.len() as u16;
        self.devices.insert(d.clone(), (i, Learned::default()));
        (i, Learned::default())
    }

    fn new_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    /// Takes the pending bounce of `key` with this size and original, or,
    /// failing that, the first with this size.
    fn take(&mut self, key: (u64, u16), size: Option<u64>, orig: u64) -> Option<Pending> {
        let q = self.pending.get_mut(&key)?;
        let exact = q
            .iter()
            .position(|p| p.orig == orig && size.is_none_or(|s| s == p.size));
        let i = match exact {
            Some(i) => i,
            None => {
                let i = q.iter().position(|p| size.is_some_and(|s| s == p.size))?;
                self.unpaired.loose_pairs += 1;
                i
            }
        };
        q.remove(i)
    }

    fn in_fallback(&self, dma: u64) -> bool {
        self.fallback.is_some_and(|(lo, hi)| dma >= lo && dma < hi)
    }

    /// Turns one record into operations for `sink`.
    pub(crate) fn record(&mut self, rec: Record, sink: &mut impl FnMut(Op)) {
        match rec {
            Record::Event(e) => self.event(e, sink),
            Record::Lost(_) => self.unpaired.lost_notes += 1,
            _ => {}
        }
    }

    fn event(&mut self, e: Event, sink: &mut impl FnMut(Op)) {
        let t0 = *self.t0.get_or_insert(e.timestamp_ns);
        let t = e.timestamp_ns.saturating_sub(t0);
        let Some(name) = &e.device else {
            if let EventKind::Marker(text) = e.kind {
                sink(Op::Marker {
                    text: text.into_boxed_str(),
                    line: e.line,
                    t,
                });
            }
            return;
        };
        let (dev, learned) = self.device(name);
        let key = (task(&e), dev);
        match e.kind {
            EventKind::Bounced(b) => {
                let id = self.new_id();
                let orig = b.dev_addr.0.wrapping_sub(learned.delta.unwrap_or(0));
                self.pending.entry(key).or_default().push_back(Pending {
                    id,
                    size: b.size,
                    orig,
                });
                sink(Op::Map {
                    id,
                    dev,
                    size: b.size,
                    orig,
                    cpu: e.cpu,
                    t,
                    line: e.line,
                });
            }
            EventKind::Map(m) => {
                let ok = !m.dma_addr.is_mapping_error();
                let dma = m.dma_addr.0;
                let p = match m.target {
                    Target::Page => self.take(key, Some(m.size), m.phys_addr.0),
                    Target::Resource => None,
                };
                let id = match p {
                    Some(p) => {
                        sink(Op::Resolve {
                            ids: Box::new([(p.id, if ok { dma } else { u64::MAX })]),
                            ok,
                            t,
                        });
                        p.id
                    }
                    None if ok && m.target == Target::Page && self.in_fallback(dma) => {
                        let id = self.new_id();
                        sink(Op::Map {
                            id,
                            dev,
                            size: m.size,
                            orig: m.phys_addr.0,
                            cpu: e.cpu,
                            t,
                            line: e.line,
                        });
                        sink(Op::Resolve {
                            ids: Box::new([(id, dma)]),
                            ok,
                            t,
                        });
                        id
                    }
                    None => {
                        if ok {
                            *self.direct.entry((dev, dma)).or_default() += 1;
                        } else {
                            self.unpaired.other_map_errors += 1;
                        }
                        return;
                    }
                };
                if ok {
                    if let Some(old) = self.single.insert((dev, dma), id) {
                        self.unpaired.reused_addresses += 1;
                        sink(Op::Unmap { id: old, t });
                    }
                }
            }
            EventKind::Unmap(u) => {
                let k = (dev, u.dma_addr.0);
                if let Some(id) = self.single.remove(&k) {
                    sink(Op::Unmap { id, t });
                } else if let Some(n) = self.direct.get_mut(&k) {
                    *n -= 1;
                    if *n == 0 {
                        self.direct.remove(&k);
                    }
                } else {
                    self.unpaired.unmaps += 1;
                }
            }
            EventKind::MapSg(m) => {
                let mut ids = Vec::new();
                for (j, phys) in m.phys_addrs.iter().enumerate() {
                    let size = m.sizes.get(j).copied();
                    let dma = m.dma_addrs.get(j).map_or(u64::MAX, |d| d.0);
                    if let Some(p) = self.take(key, size, phys.0) {
                        ids.push((p.id, dma));
                    } else if let (Some(size), true) = (size, self.in_fallback(dma)) {
                        let id = self.new_id();
                        sink(Op::Map {
                            id,
                            dev,
                            size,
                            orig: phys.0,
                            cpu: e.cpu,
                            t,
                            line: e.line,
                        });
                        ids.push((id, dma));
                    }
                }
                if m.truncated {
                    // Entries past the 128 shown: every bounce this task
                    // still has pending for the device belongs to them.
                    if let Some(q) = self.pending.get_mut(&key) {
                        ids.extend(q.drain(..).map(|p| (p.id, u64::MAX)));
                    }
                }
                let list: Box<[u32]> = ids.iter().map(|x| x.0).collect();
                if !ids.is_empty() {
                    sink(Op::Resolve {
                        ids: ids.into_boxed_slice(),
                        ok: true,
                        t,
                    });
                }
                let phys: Box<[u64]> = m.phys_addrs.iter().map(|p| p.0).collect();
                self.lists.entry((dev, phys)).or_default().push_back(list);
            }
            EventKind::MapSgErr(m) => {
                let mut ids = Vec::new();
                for phys in &m.phys_addrs {
                    if let Some(p) = self.take(key, None, phys.0) {
                        ids.push((p.id, u64::MAX));
                    }
                }
                if ids.is_empty() {
                    self.unpaired.other_map_errors += 1;
                } else {
                    sink(Op::Resolve {
                        ids: ids.into_boxed_slice(),
                        ok: false,
                        t,
                    });
                }
            }
            EventKind::UnmapSg(u) => {
                let phys: Box<[u64]> = u.phys_addrs.iter().map(|p| p.0).collect();
                let k = (dev, phys);
                let Some(q) = self.lists.get_mut(&k) else {
                    self.unpaired.unmaps += 1;
                    return;
                };
                let list = q.pop_front().unwrap_or_default();
                if q.is_empty() {
                    self.lists.remove(&k);
                }
                for &id in &list {
                    sink(Op::Unmap { id, t });
                }
            }
            _ => {}
        }
    }

    /// At the end of the trace: counts the bounces never settled.
    pub(crate) fn finish(&mut self) {
        self.unpaired.bounces = self.pending.values().map(|q| q.len() as u64).sum();
    }
}
