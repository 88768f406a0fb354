//! The first pass: what a trace says about its devices before anything is
//! placed. Each device's offset between its view of an original
//! (`swiotlb_bounced` `dev_addr`) and the CPU's (`phys_addr`), and its
//! `min_align_mask`, which no event prints.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::input::{each_record, Input, Malformed, ReadError};
use super::pair::task;
use crate::event::{Device, EventKind, Record, Target};
use crate::parser::Format;

/// What the first pass learned.
#[derive(Debug, Default)]
pub(crate) struct Survey {
    pub(crate) lines: u64,
    /// Events parsed (every kind this crate knows).
    pub(crate) events: u64,
    /// `swiotlb_bounced` events.
    pub(crate) bounced: u64,
    /// `dma_map_*` / `dma_unmap_*` events (6.12 on).
    pub(crate) dma_events: u64,
    pub(crate) markers: u64,
    /// One more than the highest CPU number seen.
    pub(crate) cpus: u32,
    pub(crate) malformed: Malformed,
    pub(crate) devices: BTreeMap<Device, DeviceSurvey>,
}

/// What pairs of one device showed.
#[derive(Debug, Default)]
pub(crate) struct DeviceSurvey {
    /// Per candidate offset (`dev_addr - phys_addr`, wrapping): how many
    /// pairs gave it, and their address agreement.
    by_delta: HashMap<u64, Agreement>,
}

/// Bounce addresses against originals, over the successful maps of one
/// offset.
#[derive(Clone, Copy, Debug)]
struct Agreement {
    votes: u64,
    /// The fewest low bits in which a bounce address and its original
    /// agreed.
    agree: u32,
    /// Every bit set in some original: an original with a set bit below
    /// `agree` is evidence that the agreement is a mask's doing, not the
    /// slot alignment's.
    orig_bits: u64,
}

/// A device's inferred placement facts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Learned {
    /// `dev_addr - phys_addr`, if any pair showed one.
    pub(crate) delta: Option<u64>,
    /// The inferred `min_align_mask` (0 when nothing shows one).
    pub(crate) min_align: u64,
    /// Successful bounced maps the inference saw.
    pub(crate) pairs: u64,
}

impl DeviceSurvey {
    fn pair(&mut self, dev_addr: u64, phys: u64, bounce: u64) {
        let a = self
            .by_delta
            .entry(dev_addr.wrapping_sub(phys))
            .or_insert(Agreement {
                votes: 0,
                agree: 64,
                orig_bits: 0,
            });
        a.votes += 1;
        a.agree = a.agree.min((bounce ^ phys).trailing_zeros());
        a.orig_bits |= phys;
    }

    /// The offset most pairs gave, and the mask its pairs show: the
    /// largest `2^k - 1` under which every bounce address kept its
    /// original's bits, if some original had a set bit there. Agreement
    /// above the 4 KiB page (the mask of NVMe and Hyper-V storage, the
    /// devices that set one) counts only as far as some original had a
    /// set bit: in a short trace, high bits agree by chance.
    pub(crate) fn learned(&self) -> Learned {
        let best = self
            .by_delta
            .iter()
            .max_by_key(|(delta, a)| (a.votes, std::cmp::Reverse(**delta)));
        let Some((&delta, a)) = best else {
            return Learned::default();
        };
        let agreed = if a.agree >= 64 {
            u64::MAX
        } else {
            (1u64 << a.agree) - 1
        };
        let evidence = a.orig_bits & agreed;
        let min_align = if evidence == 0 {
            0
        } else {
            let top = 64 - evidence.leading_zeros();
            let k = a.agree.min(top.max(PAGE_SHIFT));
            (1u64 << k) - 1
        };
        Learned {
            delta: Some(delta),
            min_align,
            pairs: a.votes,
        }
    }
}

/// The page the inference trusts agreement up to without a set bit.
const PAGE_SHIFT: u32 = 12;

/// A `swiotlb_bounced` not yet matched with its map.
struct Pending {
    size: u64,
    dev_addr: u64,
}

/// Reads the whole trace once.
pub(crate) fn survey(input: &(impl Input + ?Sized)) -> Result<Survey, ReadError> {
    let mut s = Survey::default();
    let mut pending: HashMap<(u64, Device), VecDeque<Pending>> = HashMap::new();
    let mut malformed = Malformed::default();
    let lines = each_record(input, Format::Trace, Some(&mut malformed), |rec| {
        let Record::Event(e) = rec else { return };
        s.events += 1;
        s.cpus = s.cpus.max(e.cpu.saturating_add(1));
        let who = task(&e);
        let Some(dev) = e.device else {
            if matches!(e.kind, EventKind::Marker(_)) {
                s.markers += 1;
            }
            return;
        };
        // The first pass pairs by task, device and size alone (the
        // offset is what it is learning); a mismatch now and then only
        // adds a vote for a wrong offset, which the majority outweighs.
        let take = |pending: &mut HashMap<(u64, Device), VecDeque<Pending>>, size: u64| {
            let q = pending.get_mut(&(who, dev.clone()))?;
            let i = q.iter().position(|p| p.size == size)?;
            q.remove(i)
        };
        match e.kind {
            EventKind::Bounced(b) => {
                s.bounced += 1;
                s.devices.entry(dev.clone()).or_default();
                pending.entry((who, dev)).or_default().push_back(Pending {
                    size: b.size,
                    dev_addr: b.dev_addr.0,
                });
            }
            EventKind::Map(m) => {
                s.dma_events += 1;
                // MMIO (`dma_map_resource`) never bounces.
                if m.target == Target::Resource {
                    return;
                }
                if let Some(p) = take(&mut pending, m.size) {
                    if !m.dma_addr.is_mapping_error() {
                        s.devices.entry(dev).or_default().pair(
                            p.dev_addr,
                            m.phys_addr.0,
                            m.dma_addr.0,
                        );
                    }
                }
            }
            EventKind::MapSg(m) => {
                s.dma_events += 1;
                for (j, phys) in m.phys_addrs.iter().enumerate() {
                    let (Some(&size), Some(dma)) = (m.sizes.get(j), m.dma_addrs.get(j)) else {
                        break;
                    };
                    if let Some(p) = take(&mut pending, size) {
                        s.devices
                            .entry(dev.clone())
                            .or_default()
                            .pair(p.dev_addr, phys.0, dma.0);
                    }
                }
            }
            EventKind::MapSgErr(m) => {
                s.dma_events += 1;
                // The failed list's bounces: those whose original is one
                // of its entries, under the offset most pairs gave so far
                // (none yet: no offset). Other pending bounces stay.
                let delta = s
                    .devices
                    .get(&dev)
                    .and_then(|d| d.learned().delta)
                    .unwrap_or(0);
                if let Some(q) = pending.get_mut(&(who, dev)) {
                    q.retain(|p| {
                        !m.phys_addrs
                            .iter()
                            .any(|phys| p.dev_addr.wrapping_sub(delta) == phys.0)
                    });
                }
            }
            EventKind::Unmap(_) | EventKind::UnmapSg(_) => s.dma_events += 1,
            _ => {}
        }
    })?;
    s.lines = lines;
    s.malformed = malformed;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvme_mask_is_inferred_only_with_evidence() {
        let mut d = DeviceSurvey::default();
        // Page-aligned originals in page-aligned bounces: agreement, but
        // no evidence of a mask.
        d.pair(0x10_0000, 0x10_0000, 0xbbe0_0000);
        d.pair(0x20_0000, 0x20_0000, 0xbbe0_3000);
        assert_eq!(d.learned().min_align, 0);
        // An original at 0xa10 whose bits reappear, and bit 12 differing.
        d.pair(0x30_1a10, 0x30_1a10, 0xbbe0_4a10);
        assert_eq!(d.learned().min_align, 0xfff);
        assert_eq!(d.learned().delta, Some(0));
    }

    #[test]
    fn chance_agreement_above_a_page_needs_a_set_bit() {
        let mut d = DeviceSurvey::default();
        // One pair agreeing in 21 bits, originals set only below 0x800.
        d.pair(0x1000_0a00, 0x1000_0a00, 0xbbe0_0a00);
        assert_eq!(d.learned().min_align, 0xfff);
        // An original with bit 13 set, kept: the mask reaches it.
        d.pair(0x1000_2200, 0x1000_2200, 0xbbe4_2200);
        assert_eq!(d.learned().min_align, 0x3fff);
        // A device whose bounces keep only the bits inside a slot.
        let mut e = DeviceSurvey::default();
        e.pair(0x1000_0a00, 0x1000_0a00, 0xbbe0_0200);
        assert_eq!(e.learned().min_align, 0x7ff);
    }

    #[test]
    fn an_offset_is_learned_by_majority() {
        let mut d = DeviceSurvey::default();
        let sev = 1u64 << 51;
        for i in 0..5u64 {
            d.pair(
                sev | (i << 20) | 0x200,
                (i << 20) | 0x200,
                0x8000_0000 + (i << 11),
            );
        }
        d.pair(0x1234, 0x9999, 0x8000_0000);
        let l = d.learned();
        assert_eq!(l.delta, Some(sev));
        assert_eq!(l.pairs, 5);
        // Bounces at slot starts never keep 0x200: no mask.
        assert_eq!(l.min_align, 0);
    }
}
