//! Request handling over guest memory built in the test, with chains placed
//! in a split queue the way a driver would (virtio-queue's MockSplitQueue).

use std::io::Write;
use std::time::Duration;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestMemoryMmap;

use super::*;

/// Guest memory: 1 MiB at 0. The queue sits at 0; buffers from `BUF`.
const MEM: u64 = 0x10_0000;
const BUF: u64 = 0x1_0000;
const HDR: u64 = BUF;
const DATA: u64 = BUF + 0x1000;
const STATUS: u64 = BUF + 0x100;
const SECTORS: u64 = 64;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
}

/// A temp image whose sector `s` is filled with byte `s`.
fn image() -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    for s in 0..SECTORS {
        f.write_all(&[s as u8; SECTOR_SIZE as usize]).unwrap();
    }
    f.flush().unwrap();
    f
}

fn device(image: &tempfile::NamedTempFile, faults: Faults) -> Device {
    Device::new(
        Disk::open(image.path(), false).unwrap(),
        "test-serial",
        faults,
    )
}

/// The driver side: places chains and reads the used ring.
struct Driver<'a> {
    mem: &'a GuestMemoryMmap,
    mock: MockSplitQueue<'a, GuestMemoryMmap>,
    queue: Queue,
    next_desc: u16,
}

/// A descriptor: address, length, device-writable.
type D = (u64, u32, bool);

impl<'a> Driver<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> Self {
        let mock = MockSplitQueue::new(mem, 16);
        let queue = mock.create_queue().unwrap();
        Self {
            mem,
            mock,
            queue,
            next_desc: 0,
        }
    }

    /// Make one chain available (not yet processed).
    fn post(&mut self, descs: &[D]) {
        let n = descs.len() as u16;
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, writable))| {
                let i = i as u16;
                let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 } as u16;
                if i + 1 < n {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                RawDescriptor::from(SplitDescriptor::new(
                    addr,
                    len,
                    flags,
                    self.next_desc + i + 1,
                ))
            })
            .collect();
        self.mock.add_desc_chains(&raw, self.next_desc).unwrap();
        self.next_desc += n;
    }

    /// Post one chain and let the device process the queue.
    fn submit(&mut self, device: &Device, descs: &[D]) -> Batch {
        self.post(descs);
        device.process_queue(&mut self.queue, self.mem).unwrap()
    }

    fn used_count(&self) -> u16 {
        self.mock.used().idx().load()
    }

    /// The used length of the `i`th completion.
    fn used_len(&self, i: u16) -> u32 {
        self.mock
            .used()
            .ring()
            .ref_at(usize::from(i))
            .unwrap()
            .load()
            .len()
    }

    fn status(&self) -> u8 {
        self.read(STATUS, 1)[0]
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn write(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }

    /// Write a request header for `kind` at `sector`.
    fn header(&self, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.write(HDR, &h);
        self.write(STATUS, &[0xEE]);
    }

    /// A read of `len` bytes at `sector` in one data buffer.
    fn read_req(&mut self, device: &Device, sector: u64, len: u32) -> Batch {
        self.header(VIRTIO_BLK_T_IN, sector);
        self.submit(
            device,
            &[(HDR, 16, false), (DATA, len, true), (STATUS, 1, true)],
        )
    }
}

const S: usize = SECTOR_SIZE as usize;

#[test]
fn read_returns_the_sectors_and_counts_data_plus_status() {
    let img = image();
    let dev = device(&img, Faults::none());
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let batch = drv.read_req(&dev, 3, 2 * S as u32);
    assert!(batch.notify && batch.late_writes.is_empty() && !batch.die);
    assert_eq!(drv.used_count(), 1);
    assert_eq!(drv.used_len(0), 2 * S as u32 + 1);
    assert_eq!(drv.status(), VIRTIO_BLK_S_OK as u8);
    let data = drv.read(DATA, 2 * S);
    assert!(data[..S].iter().all(|&b| b == 3));
    assert!(data[S..].iter().all(|&b| b == 4));
    let st = dev.stats();
    assert_eq!((st.requests, st.reads, st.bytes_read), (1, 1, 2 * S as u64));
}

#[test]
fn write_then_read_back_across_split_buffers() {
    let img = image();
    let dev = device(&img, Faults::none());
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let payload: Vec<u8> = (0..2 * S).map(|i| (i * 7 % 251) as u8).collect();
    drv.write(DATA, &payload[..100]);
    drv.write(DATA + 0x2000, &payload[100..]);
    drv.header(VIRTIO_BLK_T_OUT, 10);
    let _ = drv.submit(
        &dev,
        &[
            (HDR, 16, false),
            (DATA, 100, false),
            (DATA + 0x2000, 2 * S as u32 - 100, false),
            (STATUS, 1, true),
        ],
    );
    assert_eq!(drv.status(), VIRTIO_BLK_S_OK as u8);
    assert_eq!(drv.used_len(0), 1, "a write returns only the status");
    // On the disk, at sector 10.
    let mut on_disk = vec![0; 2 * S];
    std::fs::File::open(img.path())
        .unwrap()
        .read_exact_at(&mut on_disk, 10 * SECTOR_SIZE)
        .unwrap();
    assert_eq!(on_disk, payload);
    // And back through the device, into a buffer split in two.
    drv.write(DATA + 0x4000, &vec![0; 2 * S]);
    drv.header(VIRTIO_BLK_T_IN, 10);
    let _ = drv.submit(
        &dev,
        &[
            (HDR, 16, false),
            (DATA + 0x4000, S as u32, true),
            (DATA + 0x6000, S as u32, true),
            (STATUS, 1, true),
        ],
    );
    assert_eq!(drv.status(), VIRTIO_BLK_S_OK as u8);
    assert_eq!(drv.used_len(1), 2 * S as u32 + 1);
    assert_eq!(drv.read(DATA + 0x4000, S), payload[..S]);
    assert_eq!(drv.read(DATA + 0x6000, S), payload[S..]);
    let st = dev.stats();
    assert_eq!(
        (st.writes, st.bytes_written, st.reads),
        (1, 2 * S as u64, 1)
    );
}

#[test]
fn flush_and_get_id() {
    let img = image();
    let dev = device(&img, Faults::none());
    let mem = memory();
    let mut drv = Driver::new(&mem);
    drv.header(VIRTIO_BLK_T_FLUSH, 0);
    let _ = drv.submit(&dev, &[(HDR, 16, false), (STATUS, 1, true)]);
    assert_eq!(drv.status(), VIRTIO_BLK_S_OK as u8);
    assert_eq!(drv.used_len(0), 1);

    drv.header(VIRTIO_BLK_T_GET_ID, 0);
    let _ = drv.submit(
        &dev,
        &[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)],
    );
    assert_eq!(drv.status(), VIRTIO_BLK_S_OK as u8);
    assert_eq!(drv.used_len(1), 21);
    let id = drv.read(DATA, 20);
    assert_eq!(&id[..11], b"test-serial");
    assert!(id[11..].iter().all(|&b| b == 0));
    let st = dev.stats();
    assert_eq!((st.flushes, st.get_ids), (1, 1));
}

#[test]
fn unsupported_type_is_unsupp() {
    let img = image();
    let dev = device(&img, Faults::none());
    let mem = memory();
    let mut drv = Driver::new(&mem);
    drv.header(11, 0); // VIRTIO_BLK_T_DISCARD, not offered
    let _ = drv.submit(&dev, &[(HDR, 16, false), (STATUS, 1, true)]);
    assert_eq!(drv.status(), VIRTIO_BLK_S_UNSUPP as u8);
    assert_eq!(drv.used_len(0), 1);
    assert_eq!(dev.stats().unsupported, 1);
}

#[test]
fn out_of_range_sector_is_ioerr() {
    let img = image();
    let dev = device(&img, Faults::none());
    let mem = memory();
    let mut drv = Driver::new(&mem);
    // Starts inside, ends one sector past the end.
    let _ = drv.read_req(&dev, SECTORS - 1, 2 * S as u32);
    assert_eq!(drv.status(), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(drv.used_len(0), 1);
    // A sector whose byte offset overflows u64.
    let _ = drv.read_req(&dev, u64::MAX / 2, S as u32);
    assert_eq!(drv.status(), VIRTIO_BLK_S_IOERR as u8);
    // Not a whole number of sectors.
    let _ = drv.read_req(&dev, 0, 100);
    assert_eq!(drv.status(), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(dev.stats().io_errors, 3);
    assert_eq!(dev.stats().bytes_read, 0);
}

#[test]
fn descriptor_outside_memory_is_ioerr_not_a_crash() {
    let img = image();
    let dev = device(&img, Faults::none());
    let mem = memory();
    let mut drv = Driver::new(&mem);
    // Data entirely outside guest memory.
    let _ = drv.read_req_at(&dev, MEM + 0x1000, S as u32);
    assert_eq!(drv.status(), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(drv.used_len(0), 1);
    // Data starting inside and running past the end of guest memory.
    let _ = drv.read_req_at(&dev, MEM - 0x100, S as u32);
    assert_eq!(drv.status(), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(
        drv.read(MEM - 0x100, 0x100),
        vec![0; 0x100],
        "nothing written"
    );
    // A write whose source lies at the top of the address space.
    drv.header(VIRTIO_BLK_T_OUT, 0);
    let _ = drv.submit(
        &dev,
        &[
            (HDR, 16, false),
            (u64::MAX - 0x100, S as u32, false),
            (STATUS, 1, true),
        ],
    );
    assert_eq!(drv.status(), VIRTIO_BLK_S_IOERR as u8);
    // The status itself outside: nothing to say, used length 0.
    drv.header(VIRTIO_BLK_T_FLUSH, 0);
    let _ = drv.submit(&dev, &[(HDR, 16, false), (MEM + 5, 1, true)]);
    assert_eq!(drv.used_len(3), 0);
    // No writable descriptor at all.
    let _ = drv.submit(&dev, &[(HDR, 16, false)]);
    assert_eq!(drv.used_len(4), 0);
    assert_eq!(drv.used_count(), 5);
    let st = dev.stats();
    assert_eq!((st.io_errors, st.bytes_read, st.bytes_written), (5, 0, 0));
}

#[test]
fn readonly_device_refuses_writes() {
    let img = image();
    let dev = Device::new(Disk::open(img.path(), true).unwrap(), "ro", Faults::none());
    let mem = memory();
    let mut drv = Driver::new(&mem);
    drv.header(VIRTIO_BLK_T_OUT, 0);
    let _ = drv.submit(
        &dev,
        &[(HDR, 16, false), (DATA, S as u32, false), (STATUS, 1, true)],
    );
    assert_eq!(drv.status(), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(dev.stats().bytes_written, 0);
}

impl Driver<'_> {
    fn read_req_at(&mut self, device: &Device, data: u64, len: u32) -> Batch {
        self.header(VIRTIO_BLK_T_IN, 0);
        self.submit(
            device,
            &[(HDR, 16, false), (data, len, true), (STATUS, 1, true)],
        )
    }
}

#[test]
fn fault_overrun_writes_past_the_buffer() {
    let img = image();
    let dev = device(&img, Faults::none().with_overrun(8));
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let _ = drv.read_req(&dev, 1, S as u32);
    assert_eq!(drv.status(), VIRTIO_BLK_S_OK as u8);
    assert_eq!(
        drv.used_len(0),
        S as u32 + 1,
        "the used length does not admit it"
    );
    assert_eq!(drv.read(DATA + S as u64, 8), vec![FAULT_BYTE; 8]);
    assert_eq!(drv.read(DATA + S as u64 + 8, 1), vec![0]);
    assert_eq!(dev.stats().faults, 1);
    // Never past guest memory, though.
    let _ = drv.read_req_at(&dev, MEM - S as u64, S as u32);
    assert_eq!(drv.status(), VIRTIO_BLK_S_OK as u8);
    assert_eq!(dev.stats().faults, 1);
}

#[test]
fn fault_rewrite_overwrites_after_completion() {
    let img = image();
    let dev = device(&img, Faults::none().with_rewrite(Duration::ZERO));
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let batch = drv.read_req(&dev, 5, S as u32);
    // Completed with the right data...
    assert_eq!(drv.used_count(), 1);
    assert_eq!(drv.read(DATA, S), vec![5; S]);
    assert_eq!(batch.late_writes.len(), 1);
    // ...then the buffer changes under the driver.
    dev.late_writes(&mem, &batch.late_writes);
    assert_eq!(drv.read(DATA, S), vec![FAULT_BYTE; S]);
    assert_eq!(
        drv.status(),
        VIRTIO_BLK_S_OK as u8,
        "only the data is rewritten"
    );
    assert_eq!(dev.stats().faults, 1);
}

#[test]
fn fault_used_len_delta_lies_both_ways() {
    let img = image();
    let mem = memory();
    let dev = device(&img, Faults::none().with_used_len_delta(100));
    let mut drv = Driver::new(&mem);
    let _ = drv.read_req(&dev, 0, S as u32);
    assert_eq!(drv.used_len(0), S as u32 + 1 + 100);
    let dev = device(&img, Faults::none().with_used_len_delta(-1000));
    let mut drv = Driver::new(&mem);
    let _ = drv.read_req(&dev, 0, S as u32);
    assert_eq!(drv.used_len(0), 0, "saturates at zero");
    assert_eq!(dev.stats().faults, 1);
}

#[test]
fn fault_corrupt_reads_flips_the_first_byte() {
    let img = image();
    let dev = device(&img, Faults::none().with_corrupt_reads());
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let _ = drv.read_req(&dev, 7, 2 * S as u32);
    assert_eq!(drv.status(), VIRTIO_BLK_S_OK as u8);
    let data = drv.read(DATA, 2 * S);
    assert_eq!(data[0], !7);
    assert!(data[1..S].iter().all(|&b| b == 7));
    assert!(data[S..].iter().all(|&b| b == 8));
    // The disk itself is untouched.
    let mut on_disk = [0u8; 1];
    std::fs::File::open(img.path())
        .unwrap()
        .read_exact_at(&mut on_disk, 7 * SECTOR_SIZE)
        .unwrap();
    assert_eq!(on_disk[0], 7);
}

#[test]
fn fault_hang_after_takes_requests_and_never_answers() {
    let img = image();
    let dev = device(&img, Faults::none().with_hang_after(2));
    let mem = memory();
    let mut drv = Driver::new(&mem);
    for _ in 0..4 {
        let _ = drv.read_req(&dev, 0, S as u32);
    }
    assert_eq!(drv.used_count(), 2);
    let st = dev.stats();
    assert_eq!((st.requests, st.reads, st.unanswered), (4, 2, 2));
}

#[test]
fn fault_die_after_stops_before_answering() {
    let img = image();
    let dev = device(&img, Faults::none().with_die_after(1));
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let first = drv.read_req(&dev, 0, S as u32);
    assert!(!first.die);
    let second = drv.read_req(&dev, 0, S as u32);
    assert!(second.die);
    assert_eq!(drv.used_count(), 1, "the fatal request is not answered");
}

#[test]
fn event_idx_pass_drains_the_queue() {
    let img = image();
    let dev = device(&img, Faults::none());
    let mem = memory();
    let mut drv = Driver::new(&mem);
    drv.queue.set_event_idx(true);
    drv.header(VIRTIO_BLK_T_FLUSH, 0);
    drv.post(&[(HDR, 16, false), (STATUS, 1, true)]);
    drv.post(&[(HDR, 16, false), (STATUS + 1, 1, true)]);
    let _ = dev.process_queue(&mut drv.queue, &mem).unwrap();
    assert_eq!(drv.used_count(), 2);
}

#[test]
fn split_spans_splits_inside_and_between() {
    let sp = |a, l| Span {
        addr: GuestAddress(a),
        len: l,
    };
    let spans = [sp(0, 10), sp(100, 10)];
    assert_eq!(
        split_spans(&spans, 10),
        (vec![sp(0, 10)], vec![sp(100, 10)])
    );
    assert_eq!(
        split_spans(&spans, 4),
        (vec![sp(0, 4)], vec![sp(4, 6), sp(100, 10)])
    );
    assert_eq!(
        split_spans(&spans, 15),
        (vec![sp(0, 10), sp(100, 5)], vec![sp(105, 5)])
    );
    assert_eq!(split_spans(&spans, 0), (vec![], spans.to_vec()));
    assert_eq!(split_spans(&spans, 99), (spans.to_vec(), vec![]));
}

#[test]
fn data_pointed_outside_guest_memory_is_refused_by_the_memory_map() {
    let img = image();
    // A read pointed just past the end of guest memory, then a write
    // pointed at an address no region holds; the third request is honest.
    let faults =
        Faults::none().with_outside([OutsideAddr::PastRegionEnd, OutsideAddr::At(0x4000_0000)]);
    let dev = device(&img, faults);
    let mem = memory();
    let mut drv = Driver::new(&mem);
    drv.write(DATA, &[0x5a; 2 * S]);
    let _ = drv.read_req(&dev, 3, 2 * S as u32);
    assert_eq!(drv.status(), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(drv.used_len(0), 1, "nothing but the status was written");
    assert_eq!(
        drv.read(DATA, 2 * S),
        vec![0x5a; 2 * S],
        "the buffer itself untouched"
    );

    drv.header(VIRTIO_BLK_T_OUT, 5);
    let _ = drv.submit(
        &dev,
        &[(HDR, 16, false), (DATA, S as u32, false), (STATUS, 1, true)],
    );
    assert_eq!(drv.status(), VIRTIO_BLK_S_IOERR as u8);
    let mut on_disk = vec![0; S];
    std::fs::File::open(img.path())
        .unwrap()
        .read_exact_at(&mut on_disk, 5 * SECTOR_SIZE)
        .unwrap();
    assert_eq!(on_disk, [5; S], "the refused write reached the disk");

    let st = dev.stats();
    assert_eq!(
        (
            st.outside,
            st.io_errors,
            st.faults,
            st.bytes_read,
            st.bytes_written
        ),
        (2, 2, 2, 0, 0)
    );
    // The addresses are used up: the device is honest again.
    let _ = drv.read_req(&dev, 3, S as u32);
    assert_eq!(drv.status(), VIRTIO_BLK_S_OK as u8);
    assert_eq!(drv.read(DATA, S), [3; S]);
    assert_eq!(dev.stats().outside, 2);
}

#[test]
fn a_descriptor_outside_guest_memory_is_refused_before_use_and_counted() {
    let img = image();
    let dev = device(&img, Faults::none());
    let mem = memory();
    let mut drv = Driver::new(&mem);
    drv.header(VIRTIO_BLK_T_IN, 0);
    let _ = drv.submit(
        &dev,
        &[
            (HDR, 16, false),
            (MEM - 0x100, S as u32, true),
            (STATUS, 1, true),
        ],
    );
    assert_eq!(drv.status(), VIRTIO_BLK_S_IOERR as u8);
    let st = dev.stats();
    assert_eq!((st.outside, st.io_errors, st.bytes_read), (1, 1, 0));
}

#[test]
fn outside_addresses_parse() {
    assert_eq!("end".parse(), Ok(OutsideAddr::PastRegionEnd));
    assert_eq!("0x1000".parse(), Ok(OutsideAddr::At(0x1000)));
    assert_eq!("4096".parse(), Ok(OutsideAddr::At(4096)));
    assert!("nowhere".parse::<OutsideAddr>().is_err());
    assert_eq!(OutsideAddr::At(0x1000).to_string(), "0x1000");
}
