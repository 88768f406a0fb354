//! Replays of traces written here in the kernel's format, against
//! high-water marks and failures counted independently: from the mapping
//! sizes and Linux's slot rule alone (a bounce of `size` bytes whose
//! original keeps `orig & min_align_mask & 0x7ff` as its offset holds
//! `ceil((offset + size) / 2048)` slots, from its `swiotlb_bounced` until
//! its unmap).

use std::collections::HashMap;

use swiotlb_trace::replay::{read_kernel_log, replay, size, Era, Options, Policy, SizeOptions};

/// A trace being written, one event per microsecond.
#[derive(Default)]
struct Trace {
    lines: Vec<String>,
    us: u64,
}

const NVME: &str = "0000:01:00.0";
const NET: &str = "0000:00:04.0";

impl Trace {
    fn ev(&mut self, pid: u32, cpu: u32, event: String) -> &mut Self {
        self.us += 1;
        self.lines.push(format!(
            "{:>16}-{pid:<6} [{cpu:03}] ..... {}.{:06}: {event}",
            if pid == 0 { "<idle>" } else { "fio" },
            100 + self.us / 1_000_000,
            self.us % 1_000_000
        ));
        self
    }
    fn bounced(&mut self, pid: u32, cpu: u32, dev: &str, orig: u64, size: u64) -> &mut Self {
        self.ev(pid, cpu, format!(
            "swiotlb_bounced: dev_name: {dev} dma_mask=ffffffff dev_addr={orig:x} size={size} NORMAL"
        ))
    }
    fn map(&mut self, pid: u32, cpu: u32, dev: &str, dma: u64, size: u64, phys: u64) -> &mut Self {
        self.ev(pid, cpu, format!(
            "dma_map_page: {dev} dir=TO_DEVICE dma_addr={dma:x} size={size} phys_addr={phys:x} attrs="
        ))
    }
    fn unmap(&mut self, pid: u32, cpu: u32, dev: &str, dma: u64, size: u64) -> &mut Self {
        self.ev(
            pid,
            cpu,
            format!("dma_unmap_page: {dev} dir=TO_DEVICE dma_addr={dma:x} size={size} attrs="),
        )
    }
    fn map_sg(
        &mut self,
        pid: u32,
        cpu: u32,
        dev: &str,
        dma: &[u64],
        sizes: &[u64],
        phys: &[u64],
    ) -> &mut Self {
        let l = |v: &[u64]| {
            v.iter()
                .map(|x| format!("{x:#x}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        self.ev(pid, cpu, format!(
            "dma_map_sg: {dev} dir=FROM_DEVICE dma_addrs={{{}}} sizes={{{}}} phys_addrs={{{}}} attrs=",
            l(dma), l(sizes), l(phys)
        ))
    }
    fn unmap_sg(&mut self, pid: u32, cpu: u32, dev: &str, phys: &[u64]) -> &mut Self {
        let l = phys
            .iter()
            .map(|x| format!("{x:#x}"))
            .collect::<Vec<_>>()
            .join(",");
        self.ev(
            pid,
            cpu,
            format!("dma_unmap_sg: {dev} dir=FROM_DEVICE phys_addrs={{{l}}} attrs="),
        )
    }
    fn marker(&mut self, text: &str) -> &mut Self {
        self.ev(1, 0, format!("tracing_mark_write: {text}"))
    }
    fn text(&self) -> String {
        let mut s = String::from("# tracer: nop\n#\n");
        for l in &self.lines {
            s.push_str(l);
            s.push('\n');
        }
        s
    }
}

/// Linux's slot count for one bounce.
fn slots(size: u64, orig: u64, min_align: u64) -> u64 {
    ((orig & min_align & 0x7ff) + size).div_ceil(2048)
}

/// Slots held over time, counted by hand.
#[derive(Default)]
struct Count {
    used: u64,
    hiwater: u64,
    live: HashMap<&'static str, u64>,
}

impl Count {
    fn take(&mut self, name: &'static str, n: u64) {
        self.used += n;
        self.hiwater = self.hiwater.max(self.used);
        assert!(self.live.insert(name, n).is_none());
    }
    fn give(&mut self, name: &'static str) {
        self.used -= self.live.remove(name).unwrap();
    }
}

fn one_area(nslabs: u64) -> Options {
    let mut o = Options::default();
    o.nslabs = Some(nslabs);
    o.nareas = Some(1);
    o
}

#[test]
fn slots_are_taken_at_swiotlb_bounced_not_at_the_map_event() {
    // Two CPUs: task 10 on CPU 0 bounces while task 20 on CPU 1 unmaps.
    // The kernel took task 10's slots before task 20 gave its back, so
    // the peak holds both; a replay placing at dma_map_page would miss it.
    let mut t = Trace::default();
    let mut c = Count::default();
    t.bounced(20, 1, NET, 0x5000_0000, 6000)
        .map(20, 1, NET, 0xbbe0_0000, 6000, 0x5000_0000);
    c.take("x", slots(6000, 0x5000_0000, 0));
    t.bounced(10, 0, NET, 0x6000_0000, 9000);
    c.take("a", slots(9000, 0x6000_0000, 0));
    t.unmap(20, 1, NET, 0xbbe0_0000, 6000);
    c.give("x");
    t.map(10, 0, NET, 0xbbe0_2000, 9000, 0x6000_0000);
    t.bounced(20, 1, NET, 0x7000_0000, 100);
    c.take("b", slots(100, 0x7000_0000, 0));
    t.unmap(10, 0, NET, 0xbbe0_2000, 9000);
    c.give("a");
    t.map(20, 1, NET, 0xbbe0_0000, 100, 0x7000_0000);
    let r = replay(t.text().as_str(), &one_area(1024)).unwrap();
    assert_eq!(r.era, Era::Full);
    assert_eq!(r.io_tlb_used_hiwater, Some(c.hiwater));
    assert_eq!(c.hiwater, 3 + 5, "the two held at once");
    assert_eq!(r.io_tlb_used_at_end, c.used);
    assert_eq!(r.mappings, 3);
    assert_eq!((r.failures, r.kernel_failures), (0, 0));
    assert_eq!(r.unpaired.unmaps, 0);
    assert_eq!(r.unpaired.bounces, 0);
}

#[test]
fn a_kernel_failed_map_gives_back_what_the_replay_took() {
    // 128 slots; the kernel fails a 200 KiB bounce that the replay fits,
    // and both fail one that fits neither.
    let mut t = Trace::default();
    let mut c = Count::default();
    t.bounced(7, 0, NET, 0x1_0000, 64 << 10)
        .map(7, 0, NET, 0xbbe0_0000, 64 << 10, 0x1_0000);
    c.take("a", 32);
    t.bounced(7, 0, NET, 0x10_0000, 100 << 10);
    c.take("f", 50);
    t.map(7, 0, NET, u64::MAX, 100 << 10, 0x10_0000);
    c.give("f");
    t.bounced(7, 0, NET, 0x20_0000, 256 << 10);
    t.map(7, 0, NET, u64::MAX, 256 << 10, 0x20_0000);
    t.unmap(7, 0, NET, 0xbbe0_0000, 64 << 10);
    c.give("a");
    let r = replay(t.text().as_str(), &one_area(128)).unwrap();
    assert_eq!(r.io_tlb_nslabs, 128);
    assert_eq!(r.io_tlb_used_hiwater, Some(c.hiwater));
    assert_eq!(c.hiwater, 82);
    assert_eq!(r.kernel_failures, 2);
    assert_eq!(r.failures, 1);
    assert_eq!(r.failures_compared.both, 1);
    assert_eq!(r.failures_compared.only_kernel, 1);
    assert_eq!(r.failures_compared.only_replay, 0);
    assert_eq!(r.io_tlb_used_at_end, 0);
    assert_eq!(r.per_device[0].kernel_failures, 2);
}

#[test]
fn a_list_mapped_twice_and_unmapped_twice_pairs_first_in_first_out() {
    // The same two buffers mapped as a list twice, with other lengths the
    // second time; the first unmap releases the first mapping's slots.
    let phys = [0x3000_0000u64, 0x3001_0000];
    let mut t = Trace::default();
    let mut c = Count::default();
    t.bounced(5, 2, NVME, phys[0], 0x1000)
        .bounced(5, 2, NVME, phys[1], 0x1000);
    t.map_sg(
        5,
        2,
        NVME,
        &[0xbbe0_0000, 0xbbe0_1000],
        &[0x1000, 0x1000],
        &phys,
    );
    c.take("l1", 2 + 2);
    t.bounced(5, 2, NVME, phys[0], 0x8000)
        .bounced(5, 2, NVME, phys[1], 0x800);
    t.map_sg(
        5,
        2,
        NVME,
        &[0xbbe0_2000, 0xbbe1_0000],
        &[0x8000, 0x800],
        &phys,
    );
    c.take("l2", 16 + 1);
    t.marker("both mapped");
    t.unmap_sg(0, 2, NVME, &phys);
    c.give("l1");
    t.marker("one unmapped");
    let after_first = c.used;
    t.unmap_sg(0, 2, NVME, &phys);
    c.give("l2");
    t.marker("none");
    let r = replay(t.text().as_str(), &one_area(1024)).unwrap();
    assert_eq!(r.io_tlb_used_hiwater, Some(c.hiwater));
    assert_eq!(r.markers.len(), 3);
    assert_eq!(r.markers[0].io_tlb_used, 21);
    assert_eq!(r.markers[1].io_tlb_used, after_first);
    assert_eq!(after_first, 17, "the second list is left");
    assert_eq!(r.markers[2].io_tlb_used, 0);
    assert_eq!(r.mappings, 4);
    assert_eq!(r.unpaired.unmaps, 0);
}

#[test]
fn markers_carry_the_mark_the_kernel_would_report_at_the_next_one() {
    let mut t = Trace::default();
    t.marker("start");
    t.bounced(3, 0, NET, 0x1000, 4096)
        .map(3, 0, NET, 0xbbe0_0000, 4096, 0x1000);
    t.bounced(3, 0, NET, 0x9000, 8192)
        .map(3, 0, NET, 0xbbe0_2000, 8192, 0x9000);
    t.unmap(3, 0, NET, 0xbbe0_0000, 4096);
    t.marker("phase two");
    // Only frees here: no allocation, so the next mark is 0.
    t.unmap(3, 0, NET, 0xbbe0_2000, 8192);
    t.marker("idle");
    t.bounced(3, 0, NET, 0x1000, 100)
        .map(3, 0, NET, 0xbbe0_0000, 100, 0x1000);
    let r = replay(t.text().as_str(), &one_area(1024)).unwrap();
    let m: Vec<_> = r
        .markers
        .iter()
        .map(|m| (m.text.as_str(), m.io_tlb_used, m.io_tlb_used_hiwater))
        .collect();
    assert_eq!(
        m,
        [("start", 0, 2 + 4), ("phase two", 4, 0), ("idle", 0, 1)]
    );
    assert_eq!(r.markers[1].line, 9);
}

#[test]
fn nvme_min_align_is_inferred_and_changes_the_slot_count() {
    // Originals at sector offsets; the kernel kept their low 12 bits.
    let mut t = Trace::default();
    let mut c = Count::default();
    let names = ["a", "b", "c", "d", "e", "f"];
    let mut live = Vec::new();
    for (i, off) in [0x200u64, 0xa00, 0x400, 0xe00, 0x600, 0x800]
        .into_iter()
        .enumerate()
    {
        let orig = 0x4000_0000 + ((i as u64) << 16) + off;
        let bounce = 0xbbe0_0000 + ((i as u64) << 14) + if i % 2 == 0 { 0x1000 } else { 0 } + off;
        t.bounced(9, 1, NVME, orig, 4096)
            .map(9, 1, NVME, bounce, 4096, orig);
        c.take(names[i], slots(4096, orig, 0xfff));
        live.push(bounce);
    }
    for (i, b) in live.iter().enumerate() {
        t.unmap(9, 1, NVME, *b, 4096);
        c.give(names[i]);
    }
    let r = replay(t.text().as_str(), &one_area(1024)).unwrap();
    let d = &r.per_device[0];
    assert_eq!((d.min_align_mask, d.min_align_source), (0xfff, "inferred"));
    assert_eq!(r.io_tlb_used_hiwater, Some(c.hiwater));
    assert_eq!(
        c.hiwater,
        5 * 3 + 2,
        "only the original at 0x800 fits two slots"
    );
    // Told otherwise, every 4 KiB bounce is two slots.
    let mut o = one_area(1024);
    o.min_align = vec![(NVME.into(), 0)];
    let r = replay(t.text().as_str(), &o).unwrap();
    assert_eq!(r.io_tlb_used_hiwater, Some(12));
    assert_eq!(r.per_device[0].min_align_source, "option");
    o.min_align = vec![(NVME.into(), 0x1001)];
    assert!(replay(t.text().as_str(), &o).is_err());
}

#[test]
fn a_confidential_guests_address_offset_is_learned() {
    // AMD SEV: the device sees originals with the encryption bit set.
    let c_bit = 1u64 << 51;
    let mut t = Trace::default();
    for i in 0..4u64 {
        let orig = 0x2_0000_0000 + (i << 20);
        t.bounced(4, 0, NET, orig | c_bit, 1500).map(
            4,
            0,
            NET,
            0xbbe0_0000 + (i << 11),
            1500,
            orig,
        );
    }
    let r = replay(t.text().as_str(), &one_area(1024)).unwrap();
    assert_eq!(r.per_device[0].dev_addr_offset, Some(c_bit));
    assert_eq!(r.unpaired.loose_pairs, 0);
    assert_eq!(r.unpaired.bounces, 0);
    assert_eq!(r.io_tlb_used_at_end, 4);
}

#[test]
fn placements_match_linux_next_fit_at_the_logged_base() {
    // One CPU, maps of one slot and two, nothing freed: next-fit puts
    // each right after the last (a two-slot map of 4 KiB is page
    // aligned: after an odd slot it skips one).
    let base = 0xbbe0_0000u64;
    let sizes = [100u64, 4096, 300, 2000, 4096];
    let mut want = Vec::new();
    let mut slot = 0u64;
    for s in sizes {
        if s >= 4096 && slot % 2 == 1 {
            slot += 1;
        }
        want.push(base + slot * 2048);
        slot += s.div_ceil(2048);
    }
    let mut t = Trace::default();
    for (i, (&s, &dma)) in sizes.iter().zip(&want).enumerate() {
        let orig = 0x9000_0000 + ((i as u64) << 16);
        t.bounced(2, 0, NET, orig, s).map(2, 0, NET, dma, s, orig);
    }
    let mut o = one_area(1024);
    o.kernel_log = Some(read_kernel_log(
        "[    0.000000] software IO TLB: mapped [mem 0x00000000bbe00000-0x00000000bbffffff] (2MB)\n",
    )
    .unwrap());
    let r = replay(t.text().as_str(), &o).unwrap();
    assert_eq!(r.pool_base, Some(base));
    let p = r.placed_exactly.unwrap();
    assert_eq!((p.compared, p.exact), (5, 5));
    // A kernel address off by a slot is counted as such.
    let text = t.text().replace(
        &format!("dma_addr={:x}", want[2]),
        &format!("dma_addr={:x}", want[2] + 2048),
    );
    let r = replay(text.as_str(), &o).unwrap();
    let p = r.placed_exactly.unwrap();
    assert_eq!((p.compared, p.exact), (5, 4));
    // A bounce in a pool the kernel grew is outside the boot pool: not
    // compared, counted.
    let grown = 0x1_2000_0000u64;
    let text = t.text().replace(
        &format!("dma_addr={:x}", want[4]),
        &format!("dma_addr={grown:x}"),
    );
    let p = replay(text.as_str(), &o).unwrap().placed_exactly.unwrap();
    assert_eq!((p.compared, p.exact, p.outside_pool), (4, 4, 1));
}

#[test]
fn the_kernel_log_gives_the_geometry() {
    let log = "\
[    0.000000] software IO TLB: area num 4.
[    0.812000] software IO TLB: mapped [mem 0x00000000b7e00000-0x00000000bbe00000] (64MB)
[  812.5] swiotlb buffer is full (sz: 262144 bytes), total 32768 (slots), used 32700 (slots)
";
    let mut t = Trace::default();
    t.bounced(2, 3, NET, 0x1000, 512)
        .map(2, 3, NET, 0xb7e0_0000, 512, 0x1000);
    let mut o = Options::default();
    o.kernel_log = Some(read_kernel_log(log).unwrap());
    let r = replay(t.text().as_str(), &o).unwrap();
    assert_eq!((r.io_tlb_nslabs, r.io_tlb_nareas), (32768, 4));
    assert_eq!(r.kernel_full_messages, Some(1));
    assert_eq!(
        serde_json::to_value(&r).unwrap()["geometry_source"],
        "dmesg"
    );
}

#[test]
fn a_trace_of_bounces_alone_gives_no_high_water_mark() {
    let mut t = Trace::default();
    t.bounced(2, 0, NET, 0x1000, 512)
        .bounced(2, 0, NET, 0x2000, 512);
    let r = replay(t.text().as_str(), &Options::default()).unwrap();
    assert_eq!(r.era, Era::BouncedOnly);
    assert_eq!(r.io_tlb_used_hiwater, None);
    assert_eq!((r.mappings, r.bytes), (2, 1024));
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("not when it was released")),
        "{:?}",
        r.notes
    );
    let e = size(t.text().as_str(), &SizeOptions::default()).unwrap_err();
    assert!(e.to_string().contains("before 6.12"), "{e}");
}

#[test]
fn unmaps_of_mappings_made_before_the_trace_are_counted() {
    let mut t = Trace::default();
    t.unmap(2, 0, NET, 0xbbe0_0000, 512);
    t.unmap_sg(2, 0, NET, &[0x1000]);
    t.map(2, 0, NET, 0x5000, 512, 0x5000)
        .unmap(2, 0, NET, 0x5000, 512);
    let r = replay(t.text().as_str(), &Options::default()).unwrap();
    assert_eq!(r.unpaired.unmaps, 2);
    assert_eq!(r.mappings, 0, "a direct map is no bounce");
}

#[test]
fn the_fast_policy_replays_the_same_demand() {
    let mut t = Trace::default();
    for i in 0..50u64 {
        t.bounced(2, (i % 2) as u32, NET, i << 20, 1000 + i * 97);
        t.map(
            2,
            (i % 2) as u32,
            NET,
            0xbbe0_0000 + (i << 12),
            1000 + i * 97,
            i << 20,
        );
    }
    let mut o = one_area(1024);
    let n = replay(t.text().as_str(), &o).unwrap();
    o.policy = Policy::Fast;
    let f = replay(t.text().as_str(), &o).unwrap();
    let want: u64 = (0..50u64).map(|i| slots(1000 + i * 97, i << 20, 0)).sum();
    assert_eq!(n.io_tlb_used_hiwater, Some(want));
    assert_eq!(f.io_tlb_used_hiwater, Some(want));
    assert_eq!(f.policy, Policy::Fast);
}

#[test]
fn size_finds_the_smallest_pool_and_checks_it() {
    // 300 slots live at the peak: one area of 256 slots fails, 512 holds.
    let mut t = Trace::default();
    for i in 0..150u64 {
        t.bounced(2, 0, NET, i << 20, 4096)
            .map(2, 0, NET, 0xbbe0_0000 + (i << 12), 4096, i << 20);
    }
    let mut o = SizeOptions::default();
    o.replay.nareas = Some(1);
    let s = size(t.text().as_str(), &o).unwrap();
    assert_eq!(s.demand_slots, 300);
    assert_eq!(s.nextfit.smallest.nslabs, 512);
    assert_eq!(s.nextfit.smallest.failures, 0);
    // 300 of 512 leaves 41 % free: the 25 % margin holds.
    assert_eq!(s.nextfit.recommended.nslabs, 512);
    assert_eq!(s.nextfit.swiotlb, "swiotlb=512,1");
    // Any multiple of 128: 384 holds 300 slots of 4 KiB mappings.
    assert_eq!(s.nextfit.smallest_any.nslabs, 384);
    assert_eq!(s.nextfit.smallest_any.failures, 0);
    // Every pool tried below the answer failed.
    assert!(s
        .nextfit
        .tried
        .iter()
        .all(|c| c.nslabs >= 512 || c.failures > 0));
    assert!(!s.search.is_empty());
    assert_eq!(s.dynamic.failures, 0);
}

#[test]
fn interrupts_on_two_cpus_pair_by_cpu_under_the_idle_task() {
    // PID 0 is every CPU's idle task: receive refills in interrupts on
    // CPUs 0 and 1 interleave, same device, same size. Paired by CPU, the
    // offset is the encryption bit; paired by PID alone, every vote would
    // cross the two.
    let c_bit = 1u64 << 47;
    let mut t = Trace::default();
    for i in 0..6u64 {
        let (a, b) = (0x1_0000_0000 + (i << 24), 0x2_0000_0000 + (i << 24));
        t.bounced(0, 0, NET, a | c_bit, 1536)
            .bounced(0, 1, NET, b | c_bit, 1536);
        t.map(0, 1, NET, 0xbbe0_0000 + (i << 13), 1536, b);
        t.map(0, 0, NET, 0xbbe0_1000 + (i << 13), 1536, a);
    }
    let r = replay(t.text().as_str(), &one_area(1024)).unwrap();
    assert_eq!(r.per_device[0].dev_addr_offset, Some(c_bit));
    assert_eq!(r.unpaired.loose_pairs, 0);
    assert_eq!(r.unpaired.bounces, 0);
    assert_eq!(r.io_tlb_used_at_end, 12);
}
