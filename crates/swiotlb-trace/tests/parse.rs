//! Each event in each of its printed forms, the line shapes of ftrace and
//! trace-cmd, errors with their line numbers, gzip and dmesg input.

use std::io::Write;

use swiotlb_trace::{
    AllocKind, Attrs, Counts, Direction, DmaAddr, ErrorKind, Event, EventKind, Format, FreeKind,
    Message, ParseError, Parser, PhysAddr, Record, SyncTo, Target,
};

const HEAD: &str = "            fio-1433    [002] d..1.   812.410022: ";

fn records(text: &str) -> (Vec<Result<Record, ParseError>>, Counts) {
    let mut p = Parser::new(text.as_bytes());
    let v: Vec<_> = (&mut p).collect();
    (v, p.counts())
}

/// The one event of `HEAD` + `body`.
fn event(body: &str) -> Event {
    let line = format!("{HEAD}{body}\n");
    let (v, _) = records(&line);
    assert_eq!(v.len(), 1, "{line}: {v:?}");
    match v.into_iter().next().unwrap() {
        Ok(Record::Event(e)) => {
            assert_eq!((e.line, e.cpu, e.pid), (1, 2, 1433));
            assert_eq!(e.timestamp_ns, 812_410_022_000);
            e
        }
        other => panic!("{line}: {other:?}"),
    }
}

fn error(body: &str) -> ErrorKind {
    let text = format!("# comment\n{HEAD}{body}\n");
    let (v, c) = records(&text);
    assert_eq!(c.errors, 1);
    match &v[..] {
        [Err(e)] => {
            assert_eq!(e.line, 2);
            e.kind
        }
        other => panic!("{body}: {other:?}"),
    }
}

fn dev(e: &Event) -> &str {
    e.device.as_ref().unwrap().as_str()
}

#[test]
fn map_page() {
    let e = event("dma_map_page: 0000:01:00.0 dir=TO_DEVICE dma_addr=fbe00000 size=4096 phys_addr=23e1c4000 attrs=");
    assert_eq!(dev(&e), "0000:01:00.0");
    let EventKind::Map(m) = e.kind else { panic!() };
    assert_eq!(m.target, Target::Page);
    assert_eq!(m.dir, Direction::ToDevice);
    assert_eq!(m.dma_addr, DmaAddr(0xfbe0_0000));
    assert_eq!(m.size, 4096);
    assert_eq!(m.phys_addr, PhysAddr(0x2_3e1c_4000));
    assert_eq!(m.attrs, Attrs::default());
    assert!(!m.failed());
}

#[test]
fn map_page_failed() {
    let e = event("dma_map_page: 0000:01:00.0 dir=FROM_DEVICE dma_addr=ffffffffffffffff size=262144 phys_addr=23f000000 attrs=NO_WARN");
    let EventKind::Map(m) = e.kind else { panic!() };
    assert!(m.failed());
    assert_eq!(m.dir, Direction::FromDevice);
    assert!(m.attrs.contains(Attrs::NO_WARN));
}

#[test]
fn map_and_unmap_resource() {
    let e = event("dma_map_resource: 0000:00:1f.6 dir=BIDIRECTIONAL dma_addr=fed10000 size=256 phys_addr=fed10000 attrs=SKIP_CPU_SYNC|PRIVILEGED");
    let EventKind::Map(m) = e.kind else { panic!() };
    assert_eq!(m.target, Target::Resource);
    assert_eq!(m.attrs.bits(), Attrs::SKIP_CPU_SYNC | Attrs::PRIVILEGED);
    let e = event("dma_unmap_resource: 0000:00:1f.6 dir=NONE dma_addr=fed10000 size=256 attrs=");
    let EventKind::Unmap(u) = e.kind else {
        panic!()
    };
    assert_eq!(
        (u.target, u.dir, u.size),
        (Target::Resource, Direction::None, 256)
    );
}

#[test]
fn unmap_page() {
    let e = event("dma_unmap_page: 0000:01:00.0 dir=TO_DEVICE dma_addr=fbe00000 size=4096 attrs=SKIP_CPU_SYNC");
    let EventKind::Unmap(u) = e.kind else {
        panic!()
    };
    assert_eq!(u.target, Target::Page);
    assert_eq!(u.dma_addr, DmaAddr(0xfbe0_0000));
    assert!(u.attrs.contains(Attrs::SKIP_CPU_SYNC));
}

#[test]
fn attrs_every_name_unknown_bits_and_names() {
    let all = "WEAK_ORDERING|WRITE_COMBINE|NO_KERNEL_MAPPING|SKIP_CPU_SYNC|FORCE_CONTIGUOUS|ALLOC_SINGLE_PAGES|NO_WARN|PRIVILEGED|0x800";
    let e = event(&format!(
        "dma_unmap_page: d dir=TO_DEVICE dma_addr=1 size=1 attrs={all}"
    ));
    let EventKind::Unmap(u) = e.kind else {
        panic!()
    };
    assert_eq!(u.attrs.bits(), 0b1011_1111_0110);
    assert!(!u.attrs.has_unknown_names());
    let e = event("dma_unmap_page: d dir=TO_DEVICE dma_addr=1 size=1 attrs=MMIO|NO_WARN");
    let EventKind::Unmap(u) = e.kind else {
        panic!()
    };
    assert_eq!(u.attrs.bits(), Attrs::NO_WARN);
    assert!(u.attrs.has_unknown_names());
}

#[test]
fn map_sg_6_12_0() {
    let e = event("dma_map_sg: 0000:01:00.0 dir=FROM_DEVICE dma_addrs={0xfbe01000,0xfbe03000} sizes={0x2000,0x1000} phys_addrs={0x23e2a0000,0x23e2b4000,0x23e2b5000} attrs=");
    let EventKind::MapSg(m) = e.kind else {
        panic!()
    };
    assert_eq!(m.dma_addrs, [DmaAddr(0xfbe0_1000), DmaAddr(0xfbe0_3000)]);
    assert_eq!(m.sizes, [0x2000, 0x1000]);
    assert_eq!(m.phys_addrs.len(), 3);
    assert_eq!((m.nents, m.ents, m.truncated), (None, None, false));
    assert_eq!((m.given(), m.mapped(), m.listed_bytes()), (3, 2, 0x3000));
}

#[test]
fn map_sg_with_counts() {
    let e = event("dma_map_sg: 0000:01:00.0 dir=TO_DEVICE nents=2/2 ents=1/1 dma_addrs={0xfbe05000} sizes={0x3000} phys_addrs={0x1000,0x2000} attrs=");
    let EventKind::MapSg(m) = e.kind else {
        panic!()
    };
    assert_eq!(m.nents.map(|c| (c.shown, c.total)), Some((2, 2)));
    assert_eq!(m.ents.map(|c| (c.shown, c.total)), Some((1, 1)));
    assert_eq!((m.given(), m.mapped()), (2, 1));
}

#[test]
fn map_sg_truncated() {
    let list = |base: u64| {
        let v: Vec<String> = (0..128)
            .map(|i| format!("{:#x}", base + i * 0x1000))
            .collect();
        format!("{{{}}}", v.join(","))
    };
    let sizes = format!("{{{}}}", vec!["0x1000"; 128].join(","));
    let e = event(&format!(
        "dma_map_sg: 0000:01:00.0 dir=TO_DEVICE nents=128/300 ents=128/300 [TRUNCATED] dma_addrs={} sizes={sizes} phys_addrs={} attrs=",
        list(0xf000_0000),
        list(0x1_0000_0000)
    ));
    let EventKind::MapSg(m) = e.kind else {
        panic!()
    };
    assert!(m.truncated);
    assert_eq!((m.given(), m.mapped(), m.dma_addrs.len()), (300, 300, 128));
    assert_eq!(m.phys_addrs[127], PhysAddr(0x1_0000_0000 + 127 * 0x1000));
}

#[test]
fn map_sg_err_lists_physical_addresses() {
    let e = event("dma_map_sg_err: 0000:01:00.0 dir=FROM_DEVICE dma_addrs={0x23f040000,0x23f080000} err=-12 attrs=");
    let EventKind::MapSgErr(m) = e.kind else {
        panic!()
    };
    assert_eq!(
        m.phys_addrs,
        [PhysAddr(0x2_3f04_0000), PhysAddr(0x2_3f08_0000)]
    );
    assert_eq!(m.err, -12);
}

#[test]
fn unmap_sg() {
    let e = event("dma_unmap_sg: 0000:01:00.0 dir=BIDIRECTIONAL phys_addrs={} attrs=");
    let EventKind::UnmapSg(u) = e.kind else {
        panic!()
    };
    assert!(u.phys_addrs.is_empty());
    assert_eq!(u.dir, Direction::Bidirectional);
}

#[test]
fn sync_single_both_ways() {
    for (name, to) in [("cpu", SyncTo::Cpu), ("device", SyncTo::Device)] {
        let e = event(&format!(
            "dma_sync_single_for_{name}: 0000:00:04.0 dir=BIDIRECTIONAL dma_addr=fbe04000 size=64"
        ));
        let EventKind::Sync(s) = e.kind else { panic!() };
        assert_eq!((s.to, s.dma_addr, s.size), (to, DmaAddr(0xfbe0_4000), 64));
    }
}

#[test]
fn sync_sg_both_ways() {
    for (name, to) in [("cpu", SyncTo::Cpu), ("device", SyncTo::Device)] {
        let e = event(&format!("dma_sync_sg_for_{name}: 0000:01:00.0 dir=FROM_DEVICE dma_addrs={{0xfbe01000,0xfbe03000}} sizes={{0x2000,0x1000}}"));
        let EventKind::SyncSg(s) = e.kind else {
            panic!()
        };
        assert_eq!(s.to, to);
        assert_eq!(s.sizes, [0x2000, 0x1000]);
    }
}

#[test]
fn alloc_and_free_6_12_0() {
    let e = event("dma_alloc: 0000:00:04.0 dma_addr=fbf00000 size=8192 virt_addr=00000000c1a5e2f4 flags=GFP_KERNEL|__GFP_ZERO attrs=");
    let EventKind::Alloc(a) = e.kind else {
        panic!()
    };
    assert_eq!((a.kind, a.dir, a.size), (AllocKind::Coherent, None, 8192));
    assert_eq!(a.virt_addr, Some(0xc1a5_e2f4));
    assert_eq!(a.flags.as_str(), "GFP_KERNEL|__GFP_ZERO");
    assert!(a.flags.contains("__GFP_ZERO") && a.flags.may_sleep());
    let e = event(
        "dma_free: 0000:00:04.0 dma_addr=fbf00000 size=8192 virt_addr=00000000c1a5e2f4 attrs=",
    );
    let EventKind::Free(f) = e.kind else { panic!() };
    assert_eq!(
        (f.kind, f.dir, f.dma_addr),
        (FreeKind::Coherent, None, DmaAddr(0xfbf0_0000))
    );
}

#[test]
fn alloc_and_free_6_13() {
    let e = event("dma_alloc: 0000:00:04.0 dir=BIDIRECTIONAL dma_addr=fbf00000 size=8192 virt_addr=(____ptrval____) flags=GFP_ATOMIC attrs=");
    let EventKind::Alloc(a) = e.kind else {
        panic!()
    };
    assert_eq!((a.dir, a.virt_addr), (Some(Direction::Bidirectional), None));
    assert!(!a.flags.may_sleep());
    let e = event("dma_free: 0000:00:04.0 dir=BIDIRECTIONAL dma_addr=fbf00000 size=8192 virt_addr=00000000c1a5e2f4 attrs=");
    let EventKind::Free(f) = e.kind else { panic!() };
    assert_eq!(f.dir, Some(Direction::Bidirectional));
}

#[test]
fn alloc_pages_sgt_and_errors() {
    let e = event("dma_alloc_pages: d dir=FROM_DEVICE dma_addr=fbf10000 size=16384 virt_addr=000000005e1d0a77 flags=none attrs=");
    let EventKind::Alloc(a) = e.kind else {
        panic!()
    };
    assert_eq!(a.kind, AllocKind::Pages);
    assert_eq!(a.flags.names().count(), 0);
    let e = event("dma_alloc_sgt: d dir=BIDIRECTIONAL dma_addr=fbf20000 size=8192 phys_addrs={0x110a00000,0x110a01000} flags=GFP_KERNEL attrs=");
    let EventKind::Alloc(a) = e.kind else {
        panic!()
    };
    assert_eq!(
        (a.kind, a.virt_addr, a.phys_addrs.len()),
        (AllocKind::Sgt, None, 2)
    );
    let e = event("dma_alloc_sgt_err: d dir=BIDIRECTIONAL dma_addr=0 size=1048576 virt_addr=0000000000000000 flags=GFP_KERNEL attrs=");
    let EventKind::Alloc(a) = e.kind else {
        panic!()
    };
    assert_eq!(a.kind, AllocKind::SgtErr);
    let e = event("dma_free_pages: d dir=FROM_DEVICE dma_addr=fbf10000 size=16384 virt_addr=000000005e1d0a77 attrs=");
    let EventKind::Free(f) = e.kind else { panic!() };
    assert_eq!(f.kind, FreeKind::Pages);
    let e = event("dma_free_sgt: d dir=BIDIRECTIONAL dma_addr=fbf20000 size=8192 phys_addrs={0x110a00000,0x110a01000}");
    let EventKind::Free(f) = e.kind else { panic!() };
    assert_eq!(
        (f.kind, f.phys_addrs.len(), f.attrs),
        (FreeKind::Sgt, 2, Attrs::default())
    );
}

#[test]
fn swiotlb_bounced_force_and_normal() {
    for (word, forced) in [("FORCE", true), ("NORMAL", false)] {
        let e = event(&format!("swiotlb_bounced: dev_name: 0000:01:00.0 dma_mask=ffffffff dev_addr=23e1c4000 size=4096 {word}"));
        assert_eq!(dev(&e), "0000:01:00.0");
        let EventKind::Bounced(b) = e.kind else {
            panic!()
        };
        assert_eq!(
            (b.dma_mask, b.dev_addr, b.size, b.forced),
            (0xffff_ffff, DmaAddr(0x2_3e1c_4000), 4096, forced)
        );
    }
}

#[test]
fn marker() {
    let e = event("tracing_mark_write: phase=write  qd=32 ");
    assert_eq!(e.device, None);
    assert_eq!(e.kind, EventKind::Marker("phase=write  qd=32 ".into()));
}

#[test]
fn device_name_with_spaces() {
    let e = event("dma_unmap_page: my odd dev dir=TO_DEVICE dma_addr=1 size=1 attrs=");
    assert_eq!(dev(&e), "my odd dev");
}

const BODY: &str = "dma_sync_single_for_cpu: 0000:00:04.0 dir=TO_DEVICE dma_addr=10 size=8";

fn header_of(line: &str) -> (u32, u32, u64) {
    let (v, _) = records(line);
    match &v[..] {
        [Ok(Record::Event(e))] => (e.pid, e.cpu, e.timestamp_ns),
        other => panic!("{line}: {other:?}"),
    }
}

#[test]
fn ftrace_with_and_without_flags() {
    assert_eq!(
        header_of(&format!(
            "          <idle>-0       [011] d.h2.  1.000001: {BODY}"
        )),
        (0, 11, 1_000_001_000)
    );
    assert_eq!(
        header_of(&format!(
            "          <idle>-0       [011] d.h2  1.000001: {BODY}"
        )),
        (0, 11, 1_000_001_000)
    );
    assert_eq!(
        header_of(&format!("          <idle>-0     [011]  1.000001: {BODY}")),
        (0, 11, 1_000_001_000)
    );
}

#[test]
fn trace_cmd_report_forms() {
    // Without -l, with an indent; with -l; nanosecond timestamps.
    assert_eq!(
        header_of(&format!("  kworker/3:1-88    [003]   77.123456789: {BODY}")),
        (88, 3, 77_123_456_789)
    );
    assert_eq!(
        header_of(&format!("kworker/3:1-88 [003] .... 77.123456: {BODY}")),
        (88, 3, 77_123_456_000)
    );
    let text = format!("cpus=4\nversion = 7\nCPU 2 is empty\n  fio-9  [000]  5.5: {BODY}\n");
    let (v, c) = records(&text);
    assert_eq!(v.len(), 1);
    assert_eq!((c.skipped, c.records), (3, 1));
}

#[test]
fn task_with_spaces_dashes_and_tgid() {
    assert_eq!(
        header_of(&format!(
            "  my task-with-dash 2-4242  [001] ..... 3.000000: {BODY}"
        )),
        (4242, 1, 3_000_000_000)
    );
    assert_eq!(
        header_of(&format!("  a [b] -c-7 (   7) [002] ..... 3.000000: {BODY}")),
        (7, 2, 3_000_000_000)
    );
    assert_eq!(
        header_of(&format!(
            "           <...>-31337 [000] ..... 3.000000: {BODY}"
        )),
        (31337, 0, 3_000_000_000)
    );
}

#[test]
fn comments_blank_and_unknown_events_are_counted() {
    let text = format!(
        "# tracer: nop\n#\n\n   fio-1 [000] ..... 1.0: sched_switch: prev_comm=fio prev_pid=1\n   fio-1 [000] ..... 1.0: do_sys_open <-do_syscall_64\n   fio-1 [000] ..... 1.0: {BODY}\n   fio-1 [000] ..... 1.0: block_rq_issue: 259,0 W 4096 () 8 + 8 [fio]\n"
    );
    let (v, c) = records(&text);
    assert_eq!(v.len(), 1);
    assert!(matches!(&v[0], Ok(Record::Event(e)) if e.line == 6));
    assert_eq!(
        (c.lines, c.records, c.unknown, c.skipped, c.errors),
        (7, 1, 3, 3, 0)
    );
}

#[test]
fn lost_events() {
    let (v, _) = records("CPU:3 [LOST 1234 EVENTS]\nCPU:1 [EVENTS DROPPED]\n");
    let lost: Vec<_> = v
        .into_iter()
        .map(|r| match r {
            Ok(Record::Lost(l)) => (l.line, l.cpu, l.events),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(lost, [(1, 3, Some(1234)), (2, 1, None)]);
}

#[test]
fn malformed_header_and_timestamp() {
    let (v, _) = records("# c\nnot a trace line\n");
    assert_eq!(
        v,
        [Err(ParseError {
            line: 2,
            kind: ErrorKind::Header
        })]
    );
    let (v, _) = records("\n  fio-1 [000] ..... 1.x: tracing_mark_write: a\n");
    assert_eq!(
        v,
        [Err(ParseError {
            line: 2,
            kind: ErrorKind::Timestamp
        })]
    );
    let (v, _) = records("  fio-1 [000] 1.2.3: tracing_mark_write: a\n");
    assert_eq!(
        v,
        [Err(ParseError {
            line: 1,
            kind: ErrorKind::Timestamp
        })]
    );
    // `[CPU]` without `-PID` before it.
    let (v, _) = records("  fio [000] ..... 1.0: tracing_mark_write: a\n");
    assert_eq!(
        v,
        [Err(ParseError {
            line: 1,
            kind: ErrorKind::Header
        })]
    );
}

#[test]
fn malformed_fields() {
    assert_eq!(
        error("dma_map_page: dir=TO_DEVICE dma_addr=1 size=1 phys_addr=1 attrs="),
        ErrorKind::Device
    );
    assert_eq!(error("dma_map_page: 0000:01:00.0"), ErrorKind::Device);
    assert_eq!(
        error("swiotlb_bounced: 0000:01:00.0 dma_mask=1 dev_addr=1 size=1 FORCE"),
        ErrorKind::Device
    );
    assert_eq!(
        error("dma_map_page: d dir=TO_DEVICE dma_addr=1 phys_addr=1 attrs="),
        ErrorKind::MissingField("size")
    );
    assert_eq!(
        error("swiotlb_bounced: dev_name: d dma_mask=1 dev_addr=1 size=1"),
        ErrorKind::MissingField("FORCE|NORMAL")
    );
    assert_eq!(
        error("dma_map_page: d dir=TO_DEVICE dma_addr=xyz size=1 phys_addr=1 attrs="),
        ErrorKind::BadField("dma_addr")
    );
    assert_eq!(
        error("dma_map_page: d dir=TO_DEVICE dma_addr=1 size=1 phys_addr=11111111111111111 attrs="),
        ErrorKind::BadField("phys_addr")
    );
    assert_eq!(
        error("dma_unmap_page: d dir=SIDEWAYS dma_addr=1 size=1 attrs="),
        ErrorKind::BadField("dir")
    );
    assert_eq!(
        error("dma_unmap_page: d dir=TO_DEVICE dma_addr=1 size=-1 attrs="),
        ErrorKind::BadField("size")
    );
    assert_eq!(
        error("dma_unmap_page: d dir=TO_DEVICE dma_addr=1 size=1 attrs=skip"),
        ErrorKind::BadField("attrs")
    );
    assert_eq!(
        error("dma_unmap_sg: d dir=TO_DEVICE phys_addrs=0x1,0x2 attrs="),
        ErrorKind::BadField("phys_addrs")
    );
    assert_eq!(
        error("dma_map_sg_err: d dir=TO_DEVICE dma_addrs={} err=x attrs="),
        ErrorKind::BadField("err")
    );
    assert_eq!(error("dma_map_sg: d dir=TO_DEVICE nents=1 ents=1/1 dma_addrs={0x1} sizes={0x1} phys_addrs={0x1} attrs="), ErrorKind::BadField("nents"));
    assert_eq!(
        error("dma_map_sg: d dir=TO_DEVICE dma_addrs={0x1} sizes={} phys_addrs={0x1} attrs="),
        ErrorKind::ListLength("sizes")
    );
    assert_eq!(error("dma_map_sg: d dir=TO_DEVICE nents=2/2 ents=1/1 dma_addrs={0x1} sizes={0x1} phys_addrs={0x1} attrs="), ErrorKind::ListLength("phys_addrs"));
    assert_eq!(
        error("dma_sync_sg_for_cpu: d dir=TO_DEVICE dma_addrs={0x1,0x2} sizes={0x1}"),
        ErrorKind::ListLength("sizes")
    );
}

#[test]
fn errors_carry_their_line_and_parsing_goes_on() {
    let long = "x".repeat(swiotlb_trace::MAX_LINE + 10);
    let text = format!(
        "{HEAD}{BODY}\nbad\n{HEAD}{BODY}\n{long}\n{HEAD}dma_unmap_page: d dir=TO_DEVICE size=1 attrs=\n{HEAD}{BODY}"
    );
    let (v, c) = records(&text);
    let lines: Vec<_> = v
        .iter()
        .map(|r| match r {
            Ok(Record::Event(e)) => (e.line, None),
            Err(e) => (e.line, Some(e.kind)),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        lines,
        [
            (1, None),
            (2, Some(ErrorKind::Header)),
            (3, None),
            (4, Some(ErrorKind::TooLong)),
            (5, Some(ErrorKind::MissingField("dma_addr"))),
            (6, None),
        ]
    );
    assert_eq!((c.lines, c.errors, c.records), (6, 3, 3));
}

#[test]
fn a_line_of_many_brackets_is_read_in_linear_time() {
    let line = ")(-1 [".repeat(150_000);
    let (v, _) = records(&line);
    assert_eq!(
        v,
        [Err(ParseError {
            line: 1,
            kind: ErrorKind::Header
        })]
    );
}

#[test]
fn gzip_input_is_detected() {
    let plain = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/sample.trace"
    ))
    .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let a: Vec<_> = Parser::new(&plain[..]).collect();
    let b: Vec<_> = Parser::new(&gz[..]).collect();
    assert_eq!(a, b);
    assert!(a.len() > 20);
    // A corrupt stream is an I/O error, then the end.
    let mut bad = gz.clone();
    let n = bad.len();
    bad.truncate(n / 2);
    let r: Vec<_> = Parser::new(&bad[..]).collect();
    assert!(
        matches!(
            r.last(),
            Some(Err(ParseError {
                kind: ErrorKind::Io(_),
                ..
            }))
        ),
        "{r:?}"
    );
}

/// A reader that hands out one byte at a time, as a pipe may.
struct ByteAtATime<'a>(&'a [u8]);

impl std::io::Read for ByteAtATime<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.len().min(buf.len()).min(1);
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

impl std::io::BufRead for ByteAtATime<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        Ok(&self.0[..self.0.len().min(1)])
    }

    fn consume(&mut self, n: usize) {
        self.0 = &self.0[n..];
    }
}

/// Found by fuzzing (`trace_ftrace`): the gzip magic is two bytes, and a
/// reader whose first read gave only one made a gzip stream pass for
/// plain text.
#[test]
fn gzip_is_detected_when_the_magic_arrives_a_byte_at_a_time() {
    let plain = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/sample.trace"
    ))
    .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let a: Vec<_> = Parser::new(&plain[..]).collect();
    let b: Vec<_> = Parser::new(ByteAtATime(&gz)).collect();
    assert_eq!(a, b);
    // Plain text a byte at a time, and inputs shorter than the magic.
    let c: Vec<_> = Parser::new(ByteAtATime(&plain)).collect();
    assert_eq!(a, c);
    for short in [&b""[..], b"\x1f", b"#", b"\n"] {
        let whole: Vec<_> = Parser::new(short).collect();
        let bytes: Vec<_> = Parser::new(ByteAtATime(short)).collect();
        assert_eq!(whole, bytes, "{short:?}");
    }
}

#[test]
fn sample_trace_parses_whole() {
    let text = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/sample.trace"
    ))
    .unwrap();
    let mut p = Parser::new(&text[..]);
    let events: Vec<Event> = p
        .by_ref()
        .map(|r| match r.unwrap() {
            Record::Event(e) => e,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(p.counts().errors, 0);
    assert_eq!(p.counts().unknown, 0);
    assert_eq!(events.len(), 26);
    let mut devices: Vec<_> = events.iter().filter_map(|e| e.device.clone()).collect();
    devices.sort();
    devices.dedup();
    assert_eq!(devices, ["0000:00:04.0", "0000:00:1f.6", "0000:01:00.0"]);
    // The kworker's name has a dash in it.
    assert!(events.iter().any(|e| e.pid == 117));
}

fn dmesg(text: &str) -> Vec<Result<Record, ParseError>> {
    Parser::with_format(text.as_bytes(), Format::Dmesg).collect()
}

#[test]
fn dmesg_messages() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/sample.dmesg"
    ))
    .unwrap();
    let msgs: Vec<_> = dmesg(&text)
        .into_iter()
        .map(|r| match r.unwrap() {
            Record::Kernel(k) => (
                k.line,
                k.timestamp_ns,
                k.device.map(|d| d.to_string()),
                k.message,
            ),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        msgs,
        [
            (2, Some(412_345_000), None, Message::Areas(4)),
            (
                3,
                Some(412_678_000),
                None,
                Message::Mapped {
                    start: PhysAddr(0xbbfd_b000),
                    end: PhysAddr(0xbffd_b000),
                    megabytes: 64
                }
            ),
            (
                5,
                Some(812_413_001_000),
                Some("0000:01:00.0".into()),
                Message::Full {
                    size: 262_144,
                    total_slots: Some(32768),
                    used_slots: Some(32640)
                }
            ),
        ]
    );
}

#[test]
fn dmesg_prefixes_and_old_forms() {
    let text = "software IO TLB: area num 8.\n[    0.5][    T1] software IO TLB: mapped [mem 0x0000000070000000-0x0000000074000000] (64MB)\nswiotlb buffer is full (sz: 65536 bytes)\n<4>[ 9.000001] xhci_hcd 0000:00:14.0: swiotlb buffer is full (sz: 512 bytes), total 1024 (slots), used 1024 (slots)\nsoftware IO TLB: tearing down default memory pool\n";
    let v: Vec<_> = dmesg(text).into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(v.len(), 4);
    let Record::Kernel(k) = &v[1] else { panic!() };
    assert_eq!(k.timestamp_ns, Some(500_000_000));
    let Record::Kernel(k) = &v[2] else { panic!() };
    assert_eq!(
        (k.device.clone(), k.message),
        (
            None,
            Message::Full {
                size: 65536,
                total_slots: None,
                used_slots: None
            }
        )
    );
    let Record::Kernel(k) = &v[3] else { panic!() };
    assert_eq!(k.device.as_ref().unwrap(), "0000:00:14.0");
    assert_eq!(
        dmesg("\nsoftware IO TLB: area num many.\nswiotlb buffer is full (sz: lots bytes)\n"),
        [
            Err(ParseError {
                line: 2,
                kind: ErrorKind::BadField("area num")
            }),
            Err(ParseError {
                line: 3,
                kind: ErrorKind::BadField("sz")
            })
        ]
    );
}

#[test]
fn crlf_line_ends() {
    let text = format!("# c\r\n{HEAD}dma_unmap_page: d dir=TO_DEVICE dma_addr=1 size=1 attrs=NO_WARN\r\n{HEAD}tracing_mark_write: hi\r\n");
    let mut p = Parser::new(text.as_bytes());
    let v: Vec<_> = p.by_ref().map(|r| r.unwrap()).collect();
    assert_eq!(p.line(), 3);
    let [Record::Event(u), Record::Event(m)] = &v[..] else {
        panic!("{v:?}")
    };
    let EventKind::Unmap(u) = &u.kind else {
        panic!()
    };
    assert_eq!(u.attrs.bits(), Attrs::NO_WARN);
    assert_eq!(m.kind, EventKind::Marker("hi".into()));
}
