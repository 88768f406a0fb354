//! The misuse checker (feature `checker`): each misuse of the raw API gives
//! exactly its typed finding, naming the line of the misusing call and of
//! the map it concerns; correct use gives none.
//!
//! The test plays the device: pools come from `Pool::new_heap`, where a
//! device address is the CPU address of the bounce bytes. Findings go to
//! one process-wide handler, so the tests take turns (`serial`).
#![cfg(feature = "checker")]

mod common;

use std::sync::{Arc, Mutex, MutexGuard};

use common::{bytes, device_read, device_write, forced, RawBuf};
use swiotlb::checker::{self, Count, Finding, FindingKind, Log, MapKind};
use swiotlb::provider::{Provider, ProviderError, Region};
use swiotlb::tlb::Deferral;
use swiotlb::{
    Attrs, Device, Direction, DmaAddr, Fast, GrowConfig, Growth, IoTlb, MapOptions, PhysAddr,
    Platform, Pool, PoolConfig, SgEntry, TlbKind,
};
use swiotlb_host::HeapProvider;

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

// ---------------------------------------------------------------------
// The raw API of a tlb and a platform: the same checks, with the guard
// bytes in whichever pool holds a mapping.

/// Pool memory the tests can write as the device: every region a heap
/// provider handed out, with the provenance of its CPU address.
#[derive(Default)]
struct Regions(Mutex<Vec<(u64, usize, SendPtr)>>);

#[derive(Clone, Copy)]
struct SendPtr(*mut u8);
// SAFETY: only an address, dereferenced by `Regions::device_write` under
// that function's own argument.
unsafe impl Send for SendPtr {}

impl Regions {
    /// The device writing `data` at device (and physical) address `at`:
    /// identity translation, so the address is in a region handed out.
    fn device_write(&self, at: u64, data: &[u8]) {
        let regions = self.0.lock().unwrap();
        let &(start, _, cpu) = regions
            .iter()
            .find(|(s, len, _)| (*s..*s + *len as u64).contains(&at))
            .expect("an address in a region handed out");
        let dst = cpu.0.wrapping_add((at - start) as usize);
        // SAFETY: `at` lies in a live region of the provider (a pool of
        // the tlb the test holds; regions are kept only while handed
        // out), valid for writes; `data` is not pool memory; this is the
        // device's access, and no pool call runs meanwhile.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
    }
}

/// A heap provider that keeps the regions it hands out in `Regions`.
struct Recording(HeapProvider, Arc<Regions>);

impl Recording {
    fn keep(&self, r: Region) -> Region {
        let entry = (r.phys.0, r.len, SendPtr(r.cpu.as_ptr()));
        self.1 .0.lock().unwrap().push(entry);
        r
    }
}

// SAFETY: every region is the inner heap provider's, passed on unchanged,
// and `free` gives it back to that provider; recording an address changes
// nothing of the region.
unsafe impl Provider for Recording {
    fn alloc(&self, len: usize, below: PhysAddr) -> Result<Region, ProviderError> {
        self.0.alloc(len, below).map(|r| self.keep(r))
    }

    fn alloc_nowait(&self, len: usize, below: PhysAddr) -> Result<Region, ProviderError> {
        self.0.alloc_nowait(len, below).map(|r| self.keep(r))
    }

    unsafe fn free(&self, region: Region) {
        self.1
             .0
            .lock()
            .unwrap()
            .retain(|(s, ..)| *s != region.phys.0);
        // SAFETY: the caller's obligations, passed on: `region` came from
        // the inner provider, unchanged, and is no longer used.
        unsafe { self.0.free(region) };
    }
}

/// Slots per segment of the growing tlb: 32 KiB mappings at most.
const SEG_SLOTS: u32 = 16;
const SEG: usize = SEG_SLOTS as usize * 2048;

/// A tlb whose first pool holds one segment and that grows by one, up to
/// four in all, and the memory it got.
fn growing_tlb() -> (IoTlb, Arc<Regions>) {
    let regions = Arc::new(Regions::default());
    let mut config = GrowConfig::new(SEG, 4 * SEG);
    config.grow_by = SEG;
    config.pool = PoolConfig::default().with_segment(SEG_SLOTS);
    let provider = Recording(HeapProvider::new(), regions.clone());
    let tlb = IoTlb::growing(TlbKind::Default, Growth::new(provider, config)).unwrap();
    (tlb, regions)
}

/// An original 0x40 bytes past a 4 KiB line inside `buf` (8 KiB): a
/// device with a `min_align_mask` of `0xfff` gets at least 0x40 bytes of
/// padding before its bounce address.
fn past_a_line(buf: &RawBuf) -> *mut u8 {
    let skip = 0x1040 - (buf.ptr().addr() & 0xfff);
    buf.ptr().wrapping_add(skip % 0x1000)
}

/// Maps `len` bytes at `cpu` through `tlb` for `dev`.
#[track_caller]
fn tmap(tlb: &IoTlb, dev: &Device, cpu: *mut u8, len: usize, dir: Direction, a: Attrs) -> DmaAddr {
    // SAFETY: every `cpu` given is inside a `RawBuf` that outlives its
    // mapping and is reached only through raw pointers meanwhile.
    unsafe { tlb.map_raw_with_attrs(dev, phys(cpu), cpu, len, dir, a) }.unwrap()
}

/// Maps `len` bytes at `cpu` through `plat` for `dev`.
#[track_caller]
fn pmap(plat: &Platform, dev: &Device, cpu: *mut u8, len: usize, dir: Direction) -> DmaAddr {
    // SAFETY: as in `tmap`.
    unsafe { plat.map_raw(dev, phys(cpu), cpu, len, dir) }.unwrap()
}

/// A growing tlb's raw calls: a mapping in a transient pool (made for a
/// caller that may not sleep when every pool is full) and one in a grown
/// pool (growth for a caller that may sleep), each misuse found once,
/// with the lines of the calls, and correct use finding nothing.
#[test]
fn a_growing_tlbs_raw_calls_are_checked_in_grown_and_transient_pools() {
    let _t = serial();
    let (tlb, mem) = growing_tlb();
    let d = forced();
    let al = forced().with_min_align_mask(0xfff);

    // One mapping fills the first pool.
    let fill = RawBuf::new(&bytes(1, SEG));
    // SAFETY: as in `map`.
    let dfill = unsafe { tlb.map_raw(&d, phys(fill.ptr()), fill.ptr(), SEG, TO) }.unwrap();
    assert!(tlb.first_pool().contains(PhysAddr(dfill.0)));

    // A caller that may not sleep gets a transient pool.
    let t = RawBuf::new(&[1; 8192]);
    let tcpu = past_a_line(&t);
    // SAFETY: `tcpu` is 300 bytes inside `t`, which outlives the mapping.
    let (dt, tline) = (tmap(&tlb, &al, tcpu, 300, TO, NONE), line!());
    assert_eq!(al.transient_pools(), 1);
    assert_eq!(dt.0 & 0xfff, 0x40);
    // The CPU changes the original the device owns, and the device writes
    // the byte before its mapping: both found at the unmap.
    t.write(tcpu.addr() - t.ptr().addr() + 5, &[2]);
    mem.device_write(dt.0 - 1, &[0]);
    // SAFETY: as in `map`.
    let (r, line) = (unsafe { tlb.unmap_raw(&al, dt, 300, TO, NONE) }, line!());
    r.unwrap();
    let [Finding::CpuWroteWhileDeviceOwned {
        dma: g1,
        size: 300,
        mapped_at: m1,
        caller: c1,
    }, Finding::DeviceWroteOutside {
        dma: g2,
        offset: -1,
        len: 1,
        mapped_at: m2,
        caller: c2,
    }] = found()[..]
    else {
        panic!("wrong findings");
    };
    assert_eq!((g1, g2), (dt, dt));
    assert_eq!([at(m1), at(m2)], [(HERE, tline); 2]);
    assert_eq!([at(c1), at(c2)], [(HERE, line); 2]);
    assert_eq!(al.transient_pools(), 0, "given back at the unmap");
    // Its pool is gone: a second unmap names no mapping.
    // SAFETY: nothing is mapped there any more: the call only fails.
    let (r, line) = (unsafe { tlb.unmap_raw(&al, dt, 300, TO, NONE) }, line!());
    assert!(r.is_err());
    let [Finding::NeverMapped {
        dma: g,
        size: 300,
        caller,
    }] = found()[..]
    else {
        panic!("wrong findings");
    };
    assert_eq!((g, at(caller)), (dt, (HERE, line)));

    // A caller that may sleep makes the tlb grow: a grown pool.
    let a = RawBuf::new(&bytes(2, 100));
    let sleeps = Attrs::MAY_SLEEP;
    let (da, aline) = (tmap(&tlb, &d, a.ptr(), 100, FROM, sleeps), line!());
    assert!(!tlb.first_pool().contains(PhysAddr(da.0)));
    assert_eq!(tlb.pool_index_of(PhysAddr(da.0)), Some(0), "the grown pool");
    assert_eq!(d.transient_pools(), 0);
    // The device writes one byte past the mapping, and the driver syncs
    // for the CPU in the wrong direction.
    mem.device_write(da.0 + 100, &[9]);
    // SAFETY: as in `map`.
    let (r, line) = (unsafe { tlb.sync_for_cpu_raw(&d, da, 100, TO) }, line!());
    r.unwrap();
    let [Finding::SyncDirection {
        dma: g1,
        mapped: FROM,
        given: TO,
        mapped_at: m1,
        caller: c1,
    }, Finding::DeviceWroteOutside {
        dma: g2,
        offset: 100,
        len: 1,
        mapped_at: m2,
        caller: c2,
    }] = found()[..]
    else {
        panic!("wrong findings");
    };
    assert_eq!((g1, g2), (da, da));
    assert_eq!([at(m1), at(m2)], [(HERE, aline); 2]);
    assert_eq!([at(c1), at(c2)], [(HERE, line); 2]);
    // Unmapped with a smaller size: found once (the scribble was reported
    // already and its guard byte rewritten).
    // SAFETY: as in `map`.
    let (r, line) = (unsafe { tlb.unmap_raw(&d, da, 50, FROM, NONE) }, line!());
    r.unwrap();
    let [Finding::WrongSize {
        dma: g,
        mapped: 100,
        given: 50,
        mapped_at,
        caller,
    }] = found()[..]
    else {
        panic!("wrong findings");
    };
    assert_eq!(
        (g, at(mapped_at), at(caller)),
        (da, (HERE, aline), (HERE, line))
    );

    // A list in the grown pool, unmapped in two halves.
    let bufs: Vec<RawBuf> = (0..2).map(|i| RawBuf::new(&bytes(i, 700))).collect();
    let mut sg = sg_of(&bufs);
    // SAFETY: as in `map`, for every entry.
    let (r, sline) = (unsafe { tlb.map_sg_raw(&d, &mut sg, BI, NONE) }, line!());
    r.unwrap();
    assert!(sg
        .iter()
        .all(|e| tlb.pool_index_of(PhysAddr(e.dma.0)) == Some(0)));
    // SAFETY: as in `map`.
    let (r, line) = (unsafe { tlb.unmap_sg_raw(&d, &sg[..1], BI, NONE) }, line!());
    r.unwrap();
    let [Finding::SgCountMismatch {
        dma: g,
        mapped: 2,
        given: 1,
        mapped_at,
        caller,
    }] = found()[..]
    else {
        panic!("wrong findings");
    };
    assert_eq!(
        (g, at(mapped_at), at(caller)),
        (sg[0].dma, (HERE, sline), (HERE, line))
    );
    // SAFETY: as in `map`.
    unsafe { tlb.unmap_sg_raw(&d, &sg[1..], BI, NONE) }.unwrap();
    assert_eq!(found().len(), 1, "the other half: one more mismatch");

    // Correct use: bounce, sync and unmap in the grown pool, and the
    // first pool's mapping; nothing found, nothing left live.
    let b = RawBuf::new(&bytes(3, 500));
    let opts = MapOptions::new();
    // SAFETY: as in `map`.
    let bb = unsafe { tlb.bounce_raw(&d, phys(b.ptr()), b.ptr(), 500, NONE, opts) }.unwrap();
    assert_eq!(tlb.pool_index_of(bb.phys), Some(0));
    mem.device_write(bb.dma.0, &[5; 500]);
    // SAFETY: as in `map`.
    unsafe { tlb.sync_for_cpu_raw(&d, bb.dma, 500, BI) }.unwrap();
    // SAFETY: as in `map`.
    unsafe { tlb.sync_for_device_raw(&d, bb.dma, 500, BI) }.unwrap();
    // SAFETY: as in `map`.
    unsafe { tlb.unmap_raw(&d, bb.dma, 500, BI, NONE) }.unwrap();
    assert_eq!(b.to_vec(), [5; 500]);
    // SAFETY: as in `map`.
    unsafe { tlb.unmap_raw(&d, dfill, SEG, TO, NONE) }.unwrap();
    assert_eq!(found(), []);
    assert_eq!(checker::live_mappings(&d), 0);
    assert_eq!(checker::live_mappings(&al), 0);
}

/// A request a full tlb queued is recorded when it completes: its unmap
/// is no finding. One completed at once is recorded at the call.
#[test]
fn deferred_bounces_are_recorded_when_they_complete() {
    let _t = serial();
    let tlb = IoTlb::new(TlbKind::Default, pool());
    let d = forced();
    let len = tlb.first_pool().len();
    let fill = RawBuf::new(&bytes(1, len));
    let opts = MapOptions::new();
    // SAFETY: as in `map`; the original outlives the request and its
    // mapping.
    let now =
        unsafe { tlb.bounce_deferred_raw(&d, phys(fill.ptr()), fill.ptr(), len, opts, |_| {}) };
    let Ok(Deferral::Now(filled)) = now else {
        panic!("an empty tlb maps at once");
    };
    let done = Arc::new(Mutex::new(None));
    let q = RawBuf::new(&bytes(2, 300));
    let sink = done.clone();
    // SAFETY: as above.
    let queued = unsafe {
        tlb.bounce_deferred_raw(&d, phys(q.ptr()), q.ptr(), 300, opts, move |r| {
            *sink.lock().unwrap() = Some(r.unwrap());
        })
    };
    assert!(matches!(queued, Ok(Deferral::Queued(_))));
    assert_eq!(checker::live_mappings(&d), 1);
    // The unmap frees room: the queued request completes.
    // SAFETY: as in `map`.
    unsafe { tlb.unmap_raw(&d, filled.dma, len, TO, NONE) }.unwrap();
    let b = done.lock().unwrap().take().expect("completed by the unmap");
    assert_eq!(checker::live_mappings(&d), 1);
    // SAFETY: as in `map`.
    unsafe { tlb.unmap_raw(&d, b.dma, 300, FROM, NONE) }.unwrap();
    assert_eq!(found(), []);
    assert_eq!(checker::live_mappings(&d), 0);
}

/// A platform's raw calls, through its default tlb (and a restricted one
/// for a coherent allocation): each misuse found once, with its lines.
#[test]
fn a_platforms_raw_calls_are_checked() {
    let _t = serial();
    let plat = Platform::new()
        .with_default(IoTlb::new(TlbKind::Default, pool()))
        .with_restricted(IoTlb::restricted("r", pool()));
    let p = plat.default_tlb().unwrap().first_pool();
    let d = forced();

    // Unmapped in the wrong direction.
    let a = RawBuf::new(&bytes(1, 100));
    let (da, aline) = (pmap(&plat, &d, a.ptr(), 100, TO), line!());
    assert!(p.contains(PhysAddr(da.0)));
    // SAFETY: as in `map`.
    let (r, line) = (unsafe { plat.unmap_raw(&d, da, 100, FROM, NONE) }, line!());
    r.unwrap();
    let [Finding::WrongDirection {
        dma: g,
        mapped: TO,
        given: FROM,
        mapped_at,
        caller,
    }] = found()[..]
    else {
        panic!("wrong findings");
    };
    assert_eq!(
        (g, at(mapped_at), at(caller)),
        (da, (HERE, aline), (HERE, line))
    );

    // A list entry unmapped as a single mapping, then the rest of the list.
    let bufs: Vec<RawBuf> = (0..2).map(|i| RawBuf::new(&bytes(i, 700))).collect();
    let mut sg = sg_of(&bufs);
    // SAFETY: as in `map`, for every entry.
    let (r, sline) = (unsafe { plat.map_sg_raw(&d, &mut sg, FROM, NONE) }, line!());
    r.unwrap();
    let e0 = sg[0].dma;
    // SAFETY: as in `map`.
    let (r, line) = (unsafe { plat.unmap_raw(&d, e0, 700, FROM, NONE) }, line!());
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
    // SAFETY: as in `map`.
    unsafe { plat.unmap_sg_raw(&d, &sg[1..], FROM, NONE) }.unwrap();
    assert!(matches!(found()[..], [Finding::SgCountMismatch { .. }]));

    // A sync where nothing is mapped.
    let no = DmaAddr(p.start().0 + 4096);
    // SAFETY: nothing is mapped there: the call only fails.
    let (r, line) = (unsafe { plat.sync_for_device_raw(&d, no, 16, TO) }, line!());
    assert!(r.is_err());
    let [Finding::SyncOutside {
        dma: g,
        size: 16,
        caller,
    }] = found()[..]
    else {
        panic!("wrong findings");
    };
    assert_eq!((g, at(caller)), (no, (HERE, line)));

    // The device writes into the padding, the CPU into a to-device
    // original: both found at the sync for the CPU.
    let al = forced().with_min_align_mask(0xfff);
    let b = RawBuf::new(&[1; 8192]);
    let bcpu = past_a_line(&b);
    let (db, bline) = (pmap(&plat, &al, bcpu, 100, TO), line!());
    assert_eq!(db.0 & 0xfff, 0x40);
    device_write(p, off(p, db) - 0x40, &[0; 2]);
    b.write(bcpu.addr() - b.ptr().addr(), &[7]);
    // SAFETY: as in `map`.
    let (r, line) = (unsafe { plat.sync_for_cpu_raw(&al, db, 100, TO) }, line!());
    r.unwrap();
    let [Finding::CpuWroteWhileDeviceOwned {
        mapped_at: m1,
        caller: c1,
        ..
    }, Finding::DeviceWroteOutside {
        offset: -0x40,
        len: 2,
        mapped_at: m2,
        caller: c2,
        ..
    }] = found()[..]
    else {
        panic!("wrong findings");
    };
    assert_eq!([at(m1), at(m2)], [(HERE, bline); 2]);
    assert_eq!([at(c1), at(c2)], [(HERE, line); 2]);
    // Unmapped with the original given again: nothing more.
    // SAFETY: `bcpu` is the original, valid and unreferenced.
    unsafe { plat.unmap_raw_into(&al, db, bcpu, 100, TO, NONE) }.unwrap();
    assert_eq!(found(), []);

    // A device goes away with a mapping live; its unmap then names none.
    let gone = forced();
    let c = RawBuf::new(&bytes(3, 200));
    let (dc, cline) = (pmap(&plat, &gone, c.ptr(), 200, BI), line!());
    checker::device_gone(&gone);
    let [Finding::LiveAtDeviceGone {
        dma: g,
        size: 200,
        kind: MapKind::Single,
        mapped_at,
    }] = found()[..]
    else {
        panic!("wrong findings");
    };
    assert_eq!((g, at(mapped_at)), (dc, (HERE, cline)));
    // SAFETY: as in `map`.
    unsafe { plat.unmap_raw(&gone, dc, 200, BI, NONE) }.unwrap();
    assert!(matches!(found()[..], [Finding::NeverMapped { .. }]));

    // A coherent allocation of the restricted tlb synced as a mapping.
    let rd = forced().with_restricted_tlb(0);
    let (coh, kline) = (plat.alloc_coherent(&rd, 1000).unwrap(), line!());
    let cd = coh.dma;
    // SAFETY: a coherent allocation has no original; the sync only fails.
    let (r, line) = (unsafe { plat.sync_for_cpu_raw(&rd, cd, 1000, BI) }, line!());
    assert!(r.is_err());
    let [Finding::WrongKind {
        expected: MapKind::Coherent,
        found: MapKind::Single,
        mapped_at,
        caller,
        ..
    }] = found()[..]
    else {
        panic!("wrong findings");
    };
    assert_eq!((at(mapped_at), at(caller)), ((HERE, kline), (HERE, line)));
    // SAFETY: nothing uses the allocation.
    unsafe { plat.free_coherent(&rd, coh.dma, 1000) }.unwrap();

    // Correct use: no finding, nothing live.
    let e = RawBuf::new(&bytes(4, 3000));
    let de = pmap(&plat, &d, e.ptr(), 3000, BI);
    device_write(p, off(p, de), &[6; 3000]);
    // SAFETY: as in `map`.
    unsafe { plat.sync_for_cpu_raw(&d, de, 3000, BI) }.unwrap();
    // SAFETY: as in `map`.
    unsafe { plat.sync_for_device_raw(&d, de, 3000, BI) }.unwrap();
    // SAFETY: as in `map`.
    unsafe { plat.unmap_raw(&d, de, 3000, BI, NONE) }.unwrap();
    assert_eq!(e.to_vec(), [6; 3000]);
    let direct = Device::new(swiotlb::DmaMask::BITS_64);
    let dd = pmap(&plat, &direct, e.ptr(), 3000, TO);
    // SAFETY: as in `map`.
    unsafe { plat.unmap_raw(&direct, dd, 3000, TO, NONE) }.unwrap();
    assert_eq!(found(), []);
    for dev in [&d, &al, &rd, &direct] {
        assert_eq!(checker::live_mappings(dev), 0);
    }
}

// ---------------------------------------------------------------------
// Teardown.

/// A pool dropped with a mapping live ends the mapping: the checker
/// forgets it, and the device going away later finds nothing (it used to
/// report the dropped pool's mappings then, and the simulator's drop,
/// which drops its pool first, panicked inside a device's drop).
#[test]
fn a_pool_dropped_with_mappings_live_ends_them() {
    let _t = serial();
    let d = forced();
    let buf = RawBuf::new(&[1; 100]);
    let p = pool();
    let _ = map(&p, &d, &buf, 100, FROM);
    let c = p.alloc_coherent(&d, 300).unwrap();
    assert_eq!(checker::live_mappings(&d), 2);
    drop(p);
    assert_eq!(checker::live_mappings(&d), 0);
    // A later pool for the same device starts clean.
    let q = pool();
    let dma = map(&q, &d, &buf, 100, FROM);
    // SAFETY: as in `map`.
    unsafe { q.unmap_raw(&d, dma, 100, FROM, NONE) }.unwrap();
    drop(d);
    assert_eq!(found(), []);
    let _ = c;
}

/// Findings reported from a drop that runs while the thread unwinds
/// never turn into a second panic, which would abort the process: the
/// default handler writes them to standard error, and a handler of one's
/// own that panics there has its panic caught.
#[test]
fn findings_from_drops_during_unwinding_do_not_abort() {
    let _t = serial();
    static SEEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    static PANICKY: Log<fn(&Finding)> = Log(|f| {
        SEEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        panic!("{f}");
    });
    let p = pool();
    let bufs: Vec<RawBuf> = (0..4).map(|i| RawBuf::new(&bytes(i, 100))).collect();
    // Two devices with a mapping live each, dropped together: the first
    // drop's finding panics, and the second device is dropped during that
    // panic's unwinding.
    let pair = |bufs: &[RawBuf]| -> Vec<Device> {
        let devs: Vec<Device> = (0..2).map(|_| forced()).collect();
        for (d, b) in devs.iter().zip(bufs) {
            let _ = map(&p, d, b, 100, FROM);
        }
        devs
    };
    for (handler, bufs) in [
        (&checker::Panic as &'static dyn checker::Handler, &bufs[..2]),
        (&PANICKY, &bufs[2..]),
    ] {
        let devs = pair(bufs);
        checker::set_handler(handler);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(devs)));
        checker::set_handler(&COLLECT);
        let msg = *r.unwrap_err().downcast::<String>().unwrap();
        assert!(
            msg.contains("still live when its device went away"),
            "{msg}"
        );
    }
    assert_eq!(SEEN.load(std::sync::atomic::Ordering::Relaxed), 2);
    assert_eq!(found(), []);
    assert_eq!(p.used_slots(), 4, "nothing was unmapped");
}

/// Two pools at the same physical addresses (two address spaces, or
/// simulated ones, as tests running side by side make): dropping one
/// forgets its own mappings only, not the other's at the same address.
#[test]
fn a_dropped_pool_forgets_its_own_mappings_only() {
    let _t = serial();
    let len = 32 * 2048;
    let mut memory = [vec![0u8; len], vec![0u8; len]];
    let base = PhysAddr(0x4000_0000);
    let pools: Vec<Pool> = memory
        .iter_mut()
        .map(|m| {
            let vaddr = std::ptr::NonNull::new(m.as_mut_ptr()).unwrap();
            // SAFETY: `vaddr` is valid for reads and writes of `len` bytes,
            // which `memory` holds and outlives the pools; nothing else
            // touches them while a pool lives; `base` is a simulated
            // physical address, used for arithmetic only.
            unsafe { Pool::new(vaddr, base, len, PoolConfig::default()) }.unwrap()
        })
        .collect();
    let (d0, d1) = (forced(), forced());
    let bufs = [RawBuf::new(&[1; 100]), RawBuf::new(&[2; 100])];
    let a = map(&pools[0], &d0, &bufs[0], 100, FROM);
    let b = map(&pools[1], &d1, &bufs[1], 100, FROM);
    assert_eq!(a, b, "the same device address in both");
    let [p0, p1]: [Pool; 2] = pools.try_into().unwrap();
    drop(p0);
    assert_eq!(checker::live_mappings(&d0), 0);
    assert_eq!(checker::live_mappings(&d1), 1);
    // SAFETY: as in `map`.
    unsafe { p1.unmap_raw(&d1, b, 100, FROM, NONE) }.unwrap();
    drop((d0, d1));
    assert_eq!(found(), []);
}
