//! The misuse checker (feature `checker`): each misuse of the raw API gives
//! exactly its typed finding, naming the line of the misusing call and of
//! the map it concerns; correct use gives none.
//!
//! The test plays the device: pools come from `Pool::new_heap`, where a
//! device address is the CPU address of the bounce bytes. Findings go to
//! one process-wide handler, so the tests take turns (`serial`).
#![cfg(feature = "checker")]

mod common;

use std::sync::{Mutex, MutexGuard};

use common::{bytes, device_read, device_write, forced, RawBuf};
use swiotlb::checker::{self, Count, Finding, FindingKind, Log, MapKind};
use swiotlb::{
    Attrs, Device, Direction, DmaAddr, Fast, MapOptions, PhysAddr, Pool, PoolConfig, SgEntry,
};

const TO: Direction = Direction::ToDevice;
const FROM: Direction = Direction::FromDevice;
const BI: Direction = Direction::Bidirectional;
const NONE: Attrs = Attrs::NONE;

static FOUND: Mutex<Vec<Finding>> = Mutex::new(Vec::new());
static COLLECT: Log<fn(&Finding)> =
    Log(|f| FOUND.lock().unwrap_or_else(|e| e.into_inner()).push(*f));
static TURN: Mutex<()> = Mutex::new(());

/// Takes this test's turn with the collector installed and emptied.
fn serial() -> MutexGuard<'static, ()> {
    let g = TURN.lock().unwrap_or_else(|e| e.into_inner());
    checker::set_handler(&COLLECT);
    found();
    g
}

/// The findings since the last call.
fn found() -> Vec<Finding> {
    std::mem::take(&mut *FOUND.lock().unwrap_or_else(|e| e.into_inner()))
}

fn pool() -> Pool<Fast> {
    Pool::new_heap(32 * 2048, PoolConfig::default()).unwrap()
}

fn phys(p: *mut u8) -> PhysAddr {
    PhysAddr(p.addr() as u64)
}

fn off(pool: &Pool<Fast>, dma: DmaAddr) -> usize {
    (dma.0 - pool.start().0) as usize
}

/// Maps `buf` whole for `dev`.
#[track_caller]
fn map(p: &Pool<Fast>, d: &Device, buf: &RawBuf, len: usize, dir: Direction) -> DmaAddr {
    // SAFETY: `buf` outlives the mapping and is reached only through its
    // raw pointer until the unmap.
    unsafe { p.map_raw(d, phys(buf.ptr()), buf.ptr(), len, dir) }.unwrap()
}

/// The `(file, line)` of a finding's location.
fn at(l: &'static std::panic::Location<'static>) -> (&'static str, u32) {
    (l.file(), l.line())
}

const HERE: &str = file!();

/// Every call of the raw API used rightly, with a device that writes
/// exactly its own bytes: no finding, nothing left live.
#[test]
fn correct_use_has_no_finding() {
    let _t = serial();
    let (p, d) = (pool(), forced());
    let aligned = forced().with_min_align_mask(0xfff);
    for dev in [&d, &aligned] {
        for dir in [TO, FROM, BI] {
            let buf = RawBuf::new(&bytes(1, 3000));
            let dma = map(&p, dev, &buf, 3000, dir);
            device_write(&p, off(&p, dma), &[7; 3000]);
            assert_eq!(device_read(&p, off(&p, dma), 3000), [7; 3000]);
            // SAFETY: `buf` is still reached only through its pointer.
            unsafe { p.sync_for_cpu_raw(dev, DmaAddr(dma.0 + 100), 200, dir) }.unwrap();
            buf.write(0, &[1; 10]);
            // SAFETY: as above.
            unsafe { p.sync_for_device_raw(dev, dma, 3000, dir) }.unwrap();
            // SAFETY: as above; the device is done.
            unsafe { p.unmap_raw(dev, dma, 3000, dir, NONE) }.unwrap();
        }
    }
    let buf = RawBuf::new(&bytes(2, 500));
    // SAFETY: as in `map`.
    let b = unsafe { p.bounce_raw(&d, phys(buf.ptr()), buf.ptr(), 500, NONE, MapOptions::new()) };
    // SAFETY: as above.
    unsafe { p.unmap_raw(&d, b.unwrap().dma, 500, FROM, NONE) }.unwrap();
    let bufs: Vec<RawBuf> = (0..3).map(|i| RawBuf::new(&bytes(i, 700))).collect();
    let mut sg = sg_of(&bufs);
    // SAFETY: as in `map`, for every entry.
    unsafe { p.map_sg_raw(&d, &mut sg, TO, NONE) }.unwrap();
    // SAFETY: as above.
    unsafe { p.unmap_sg_raw(&d, &sg, TO, NONE) }.unwrap();
    let c = p.alloc_coherent(&d, 5000).unwrap();
    // SAFETY: nothing uses the allocation any more.
    unsafe { p.free_coherent(&d, c.dma, 5000) }.unwrap();
    assert_eq!(found(), []);
    assert_eq!(checker::live_mappings(&d), 0);
    assert_eq!(checker::live_mappings(&aligned), 0);
    assert_eq!(p.used_slots(), 0);
}

fn sg_of(bufs: &[RawBuf]) -> Vec<SgEntry> {
    bufs.iter()
        .map(|b| SgEntry {
            phys: phys(b.ptr()),
            cpu: b.ptr(),
            len: 700,
            dma: DmaAddr(0),
        })
        .collect()
}

#[test]
fn unmap_of_an_address_never_mapped() {
    let _t = serial();
    let (p, d) = (pool(), forced());
    let dma = DmaAddr(p.start().0 + 4096);
    // SAFETY: nothing is mapped there: the call only returns an error.
    let (r, line) = (unsafe { p.unmap_raw(&d, dma, 8, TO, NONE) }, line!());
    assert!(r.is_err());
    let [Finding::NeverMapped {
        dma: got,
        size: 8,
        caller,
    }] = found()[..]
    else {
        panic!("wrong findings");
    };
    assert_eq!((got, at(caller)), (dma, (HERE, line)));
}

#[test]
fn double_unmap_is_never_mapped() {
    let _t = serial();
    let (p, d) = (pool(), forced());
    let buf = RawBuf::new(&[1; 64]);
    let dma = map(&p, &d, &buf, 64, BI);
    // SAFETY: as in `map`.
    unsafe { p.unmap_raw(&d, dma, 64, BI, NONE) }.unwrap();
    // SAFETY: already unmapped: the call only returns an error.
    let (r, line) = (unsafe { p.unmap_raw(&d, dma, 64, BI, NONE) }, line!());
    assert!(r.is_err());
    let [Finding::NeverMapped { caller, .. }] = found()[..] else {
        panic!("wrong findings");
    };
    assert_eq!(at(caller), (HERE, line));
}

#[test]
fn unmap_with_a_wrong_size() {
    let _t = serial();
    let (p, d) = (pool(), forced());
    let buf = RawBuf::new(&[1; 100]);
    let (dma, mline) = (map(&p, &d, &buf, 100, FROM), line!());
    // SAFETY: as in `map`; 64 bytes are inside the mapping.
    let (r, line) = (unsafe { p.unmap_raw(&d, dma, 64, FROM, NONE) }, line!());
    assert!(r.is_ok(), "the pool unmaps a shorter size as before");
    let [Finding::WrongSize {
        dma: got,
        mapped: 100,
        given: 64,
        mapped_at,
        caller,
    }] = found()[..]
    else {
        panic!("wrong findings");
    };
    assert_eq!(
        (got, at(mapped_at), at(caller)),
        (dma, (HERE, mline), (HERE, line))
    );
    assert_eq!(checker::live_mappings(&d), 0);
}

#[test]
fn unmap_with_a_wrong_direction() {
    let _t = serial();
    let (p, d) = (pool(), forced());
    let buf = RawBuf::new(&[1; 100]);
    let (dma, mline) = (map(&p, &d, &buf, 100, TO), line!());
    // SAFETY: as in `map`.
    let (r, line) = (unsafe { p.unmap_raw(&d, dma, 100, FROM, NONE) }, line!());
    r.unwrap();
    let [Finding::WrongDirection {
        mapped: TO,
        given: FROM,
        mapped_at,
        caller,
        ..
    }] = found()[..]
    else {
        panic!("wrong findings");
    };
    assert_eq!((at(mapped_at), at(caller)), ((HERE, mline), (HERE, line)));
}

#[test]
fn release_of_the_wrong_kind() {
    let _t = serial();
    let (p, d) = (pool(), forced());
    let bufs: Vec<RawBuf> = (0..2).map(|i| RawBuf::new(&bytes(i, 700))).collect();
    let mut sg = sg_of(&bufs);
    // SAFETY: as in `map`, for every entry.
    let (r, sline) = (unsafe { p.map_sg_raw(&d, &mut sg, TO, NONE) }, line!());
    r.unwrap();
    // A single unmap of a list's entry: the pool unmaps it.
    let e0 = sg[0].dma;
    // SAFETY: as in `map`.
    let (r, line) = (unsafe { p.unmap_raw(&d, e0, 700, TO, NONE) }, line!());
    r.unwrap();
    let [Finding::WrongKind {
        expected: MapKind::Sg,
        found: MapKind::Single,
        mapped_at,
        caller,
        ..
    }] = found()[..]
    else {
        panic!("wrong findings");
    };
    assert_eq!((at(mapped_at), at(caller)), ((HERE, sline), (HERE, line)));

    // A coherent free of a streaming mapping: the pool refuses it.
    // SAFETY: not a coherent allocation: the call only returns an error.
    let (r, line) = (unsafe { p.free_coherent(&d, sg[1].dma, 700) }, line!());
    assert!(r.is_err());
    let [Finding::WrongKind {
        expected: MapKind::Sg,
        found: MapKind::Coherent,
        caller,
        ..
    }] = found()[..]
    else {
        panic!("wrong findings");
    };
    assert_eq!(at(caller), (HERE, line));

    // A streaming unmap and a sync of a coherent allocation: refused.
    let (c, cline) = (p.alloc_coherent(&d, 700).unwrap(), line!());
    // SAFETY: a coherent allocation: the call only returns an error.
    let (r, line) = (unsafe { p.unmap_raw(&d, c.dma, 700, BI, NONE) }, line!());
    assert!(r.is_err());
    // SAFETY: as above.
    assert!(unsafe { p.sync_for_cpu_raw(&d, c.dma, 700, BI) }.is_err());
    let [Finding::WrongKind {
        expected: MapKind::Coherent,
        found: MapKind::Single,
        mapped_at,
        caller,
        ..
    }, Finding::WrongKind {
        expected: MapKind::Coherent,
        ..
    }] = found()[..]
    else {
        panic!("wrong findings");
    };
    assert_eq!((at(mapped_at), at(caller)), ((HERE, cline), (HERE, line)));
    // SAFETY: nothing uses the allocation.
    unsafe { p.free_coherent(&d, c.dma, 700) }.unwrap();
    // SAFETY: the list's second entry, still mapped.
    unsafe { p.unmap_sg_raw(&d, &sg, TO, NONE) }.unwrap_err();
    found();
    assert_eq!(checker::live_mappings(&d), 0);
}

#[test]
fn scatter_gather_unmapped_with_another_entry_count() {
    let _t = serial();
    let (p, d) = (pool(), forced());
    let bufs: Vec<RawBuf> = (0..3).map(|i| RawBuf::new(&bytes(i, 700))).collect();
    let mut sg = sg_of(&bufs);
    // SAFETY: as in `map`, for every entry.
    let (r, sline) = (unsafe { p.map_sg_raw(&d, &mut sg, FROM, NONE) }, line!());
    r.unwrap();
    // SAFETY: as in `map`, for every entry.
    let (r, line) = (unsafe { p.unmap_sg_raw(&d, &sg[..2], FROM, NONE) }, line!());
    r.unwrap();
    let got = found();
    assert_eq!(got.len(), 2);
    for (f, e) in got.iter().zip(&sg) {
        let Finding::SgCountMismatch {
            dma,
            mapped: 3,
            given: 2,
            mapped_at,
            caller,
        } = *f
        else {
            panic!("wrong finding {f}");
        };
        assert_eq!(
            (dma, at(mapped_at), at(caller)),
            (e.dma, (HERE, sline), (HERE, line))
        );
    }
    // SAFETY: as above.
    unsafe { p.unmap_sg_raw(&d, &sg[2..], FROM, NONE) }.unwrap();
    assert!(matches!(
        found()[..],
        [Finding::SgCountMismatch {
            mapped: 3,
            given: 1,
            ..
        }]
    ));
}

#[test]
fn sync_outside_a_mapping() {
    let _t = serial();
    let (p, d) = (pool(), forced());
    let buf = RawBuf::new(&[1; 100]);
    let dma = map(&p, &d, &buf, 100, BI);
    // Past the end by one byte: the pool refuses it too.
    let past = DmaAddr(dma.0 + 1);
    // SAFETY: as in `map`.
    let (r, line) = (unsafe { p.sync_for_cpu_raw(&d, past, 100, BI) }, line!());
    assert!(r.is_err());
    let [Finding::SyncOutside {
        dma: got,
        size: 100,
        caller,
    }] = found()[..]
    else {
        panic!("wrong findings");
    };
    assert_eq!((got, at(caller)), (DmaAddr(dma.0 + 1), (HERE, line)));
    // SAFETY: as in `map`.
    unsafe { p.unmap_raw(&d, dma, 100, BI, NONE) }.unwrap();
    // After the unmap.
    // SAFETY: not mapped: the call only returns an error.
    assert!(unsafe { p.sync_for_device_raw(&d, dma, 10, BI) }.is_err());
    assert!(matches!(found()[..], [Finding::SyncOutside { .. }]));
}

#[test]
fn sync_in_a_direction_the_mapping_forbids() {
    let _t = serial();
    let (p, d) = (pool(), forced());
    let buf = RawBuf::new(&[1; 100]);
    let (dma, mline) = (map(&p, &d, &buf, 100, FROM), line!());
    // SAFETY: as in `map`.
    let (r, line) = (unsafe { p.sync_for_device_raw(&d, dma, 100, TO) }, line!());
    r.unwrap();
    let [Finding::SyncDirection {
        mapped: FROM,
        given: TO,
        mapped_at,
        caller,
        ..
    }] = found()[..]
    else {
        panic!("wrong findings");
    };
    assert_eq!((at(mapped_at), at(caller)), ((HERE, mline), (HERE, line)));
    // SAFETY: as in `map`.
    unsafe { p.unmap_raw(&d, dma, 100, FROM, NONE) }.unwrap();
    assert_eq!(found(), []);
}

#[test]
fn mappings_live_when_the_device_goes_away() {
    let _t = serial();
    let (p, d) = (pool(), forced());
    let other = forced();
    let (a, b) = (RawBuf::new(&[1; 100]), RawBuf::new(&[2; 300]));
    let (da, la) = (map(&p, &d, &a, 100, TO), line!());
    let (c, lc) = (p.alloc_coherent(&d.clone(), 300).unwrap(), line!());
    let db = map(&p, &other, &b, 300, FROM);
    checker::device_gone(&d);
    let mut got = found();
    got.sort_by_key(|f| f.dma());
    let want = [
        (da, 100, MapKind::Single, la),
        (c.dma, 300, MapKind::Coherent, lc),
    ];
    let mut want = want.to_vec();
    want.sort_by_key(|w| w.0);
    assert_eq!(got.len(), 2);
    for (f, (dma, size, kind, line)) in got.iter().zip(want) {
        let Finding::LiveAtDeviceGone {
            dma: g,
            size: s,
            kind: k,
            mapped_at,
        } = *f
        else {
            panic!("wrong finding {f}");
        };
        assert_eq!((g, s, k, at(mapped_at)), (dma, size, kind, (HERE, line)));
    }
    assert_eq!(checker::live_mappings(&other), 1);
    // SAFETY: as in `map`.
    unsafe { p.unmap_raw(&other, db, 300, FROM, NONE) }.unwrap();
    // SAFETY: as in `map` (the checker has forgotten these).
    unsafe { p.unmap_raw(&d, da, 100, TO, NONE) }.unwrap();
    // SAFETY: nothing uses the allocation.
    unsafe { p.free_coherent(&d, c.dma, 300) }.unwrap();
    assert_eq!(found().len(), 2, "two releases of forgotten mappings");
}

#[test]
fn device_writing_past_its_mapping_into_the_slot_tail() {
    let _t = serial();
    let (p, d) = (pool(), forced());
    let buf = RawBuf::new(&[1; 100]);
    let (dma, mline) = (map(&p, &d, &buf, 100, FROM), line!());
    device_write(&p, off(&p, dma), &[9; 101]);
    // SAFETY: as in `map`.
    let (r, line) = (unsafe { p.unmap_raw(&d, dma, 100, FROM, NONE) }, line!());
    r.unwrap();
    let [Finding::DeviceWroteOutside {
        dma: got,
        offset: 100,
        len: 1,
        mapped_at,
        caller,
    }] = found()[..]
    else {
        panic!("wrong findings");
    };
    assert_eq!(
        (got, at(mapped_at), at(caller)),
        (dma, (HERE, mline), (HERE, line))
    );
    assert_eq!(buf.to_vec(), [9; 100], "the copy-back is unchanged");
}

#[test]
fn device_writing_before_its_mapping_into_the_padding() {
    let _t = serial();
    let (p, d) = (pool(), forced().with_min_align_mask(0xfff));
    // Room for a 4 KiB line plus 0x40 and the 100 bytes mapped, wherever
    // the allocation starts.
    let buf = RawBuf::new(&[1; 8192]);
    // An original 0x40 bytes past a 4 KiB line keeps those low bits in the
    // bounce address: at least 0x40 bytes of padding before it.
    let skip = 0x1040 - (buf.ptr().addr() & 0xfff);
    let cpu = buf.ptr().wrapping_add(skip % 0x1000);
    // SAFETY: `cpu` is 100 bytes inside `buf`, which outlives the mapping.
    let dma = unsafe { p.map_raw(&d, phys(cpu), cpu, 100, BI) }.unwrap();
    assert_eq!(dma.0 & 0xfff, 0x40);
    device_write(&p, off(&p, dma) - 1, &[0]);
    // Found at the sync for the CPU, and only once.
    // SAFETY: as in `map`.
    let (r, line) = (unsafe { p.sync_for_cpu_raw(&d, dma, 100, BI) }, line!());
    r.unwrap();
    let [Finding::DeviceWroteOutside {
        offset: -1,
        len: 1,
        caller,
        ..
    }] = found()[..]
    else {
        panic!("wrong findings");
    };
    assert_eq!(at(caller), (HERE, line));
    // SAFETY: as in `map`.
    unsafe { p.unmap_raw(&d, dma, 100, BI, NONE) }.unwrap();
    assert_eq!(found(), []);
}

#[test]
fn cpu_writing_a_to_device_buffer_the_device_owns() {
    let _t = serial();
    let (p, d) = (pool(), forced());
    let buf = RawBuf::new(&[1; 100]);
    let (dma, mline) = (map(&p, &d, &buf, 100, TO), line!());
    buf.write(50, &[2]);
    // SAFETY: as in `map`.
    let (r, line) = (unsafe { p.unmap_raw(&d, dma, 100, TO, NONE) }, line!());
    r.unwrap();
    let [Finding::CpuWroteWhileDeviceOwned {
        dma: got,
        size: 100,
        mapped_at,
        caller,
    }] = found()[..]
    else {
        panic!("wrong findings");
    };
    assert_eq!(
        (got, at(mapped_at), at(caller)),
        (dma, (HERE, mline), (HERE, line))
    );

    // A direct mapping too: the device reads the original itself.
    let dv = Device::new(swiotlb::DmaMask::BITS_64);
    let dma = map(&p, &dv, &buf, 100, TO);
    buf.write(0, &[3]);
    // SAFETY: as in `map`.
    let (r, line) = (unsafe { p.sync_for_cpu_raw(&dv, dma, 100, TO) }, line!());
    r.unwrap();
    let [Finding::CpuWroteWhileDeviceOwned { caller, .. }] = found()[..] else {
        panic!("wrong findings");
    };
    assert_eq!(at(caller), (HERE, line));
    // Owned by the CPU after the sync: writing is right, and handing it
    // back takes the new contents.
    buf.write(0, &[4]);
    // SAFETY: as in `map`.
    unsafe { p.sync_for_device_raw(&dv, dma, 100, TO) }.unwrap();
    // SAFETY: as in `map`.
    unsafe { p.unmap_raw(&dv, dma, 100, TO, NONE) }.unwrap();
    assert_eq!(found(), []);
}

#[test]
fn count_and_the_default_panic() {
    let _t = serial();
    static COUNT: Count = Count::new();
    checker::set_handler(&COUNT);
    let (p, d) = (pool(), forced());
    let dma = DmaAddr(p.start().0);
    // SAFETY: nothing is mapped: the call only returns an error.
    assert!(unsafe { p.unmap_raw(&d, dma, 8, TO, NONE) }.is_err());
    assert_eq!(COUNT.get(FindingKind::NeverMapped), 1);
    assert_eq!(COUNT.total(), 1);
    checker::set_handler(&checker::Panic);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: as above.
        let _ = unsafe { p.unmap_raw(&d, dma, 8, TO, NONE) };
    }));
    let msg = *r.unwrap_err().downcast::<String>().unwrap();
    assert!(msg.starts_with("swiotlb checker: "), "{msg}");
    assert!(msg.contains("not mapped"), "{msg}");
    checker::set_handler(&COLLECT);
}

/// Dropping the last clone of a device with a mapping live reports it.
#[test]
fn dropping_the_last_clone_of_a_device_reports_its_live_mappings() {
    let _t = serial();
    let (p, d) = (pool(), forced());
    let buf = RawBuf::new(&[1; 100]);
    let (dma, mline) = (map(&p, &d.clone(), &buf, 100, FROM), line!());
    drop(d);
    let [Finding::LiveAtDeviceGone {
        dma: got,
        size: 100,
        kind: MapKind::Single,
        mapped_at,
    }] = found()[..]
    else {
        panic!("wrong findings");
    };
    assert_eq!((got, at(mapped_at)), (dma, (HERE, mline)));
}

/// A tlb's coherent allocations go through its first pool's: checked, with
/// the caller's lines.
#[test]
fn a_tlbs_coherent_allocations_are_checked() {
    let _t = serial();
    let tlb = swiotlb::IoTlb::new(swiotlb::TlbKind::Default, pool());
    let d = forced();
    let (c, cline) = (tlb.alloc_coherent(&d, 700).unwrap(), line!());
    // SAFETY: nothing uses the allocation; the wrong size frees nothing.
    let (r, line) = (unsafe { tlb.free_coherent(&d, c.dma, 600) }, line!());
    assert!(r.is_err());
    let [Finding::WrongSize {
        mapped: 700,
        given: 600,
        mapped_at,
        caller,
        ..
    }] = found()[..]
    else {
        panic!("wrong findings");
    };
    assert_eq!((at(mapped_at), at(caller)), ((HERE, cline), (HERE, line)));
    // SAFETY: nothing uses the allocation.
    unsafe { tlb.free_coherent(&d, c.dma, 700) }.unwrap();
    assert_eq!(found(), []);
}
