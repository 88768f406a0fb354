//! virtio-drivers' real `VirtIOBlk` driven through the swiotlb `Hal`,
//! with an in-process transport and block device that read the virtqueue
//! and every buffer from the restricted pool's memory, at the device
//! addresses the driver published: a ring or a buffer that did not go
//! through the pool, or a copy the `Hal` forgot, fails the test.

use std::mem::size_of;

use swiotlb::{Device, DmaMask, IoTlb, Platform, Pool, PoolConfig};
use swiotlb_virtio::HalOptions;
use virtio_drivers::device::blk::{VirtIOBlk, SECTOR_SIZE};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{Error, PhysAddr};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Descriptor flags (virtio 1.1, 2.6.5).
const NEXT: u16 = 1;
const WRITE: u16 = 2;

/// One queue's device-address layout, as `queue_set` gave it.
#[derive(Clone, Copy, Debug)]
struct Queue {
    size: u32,
    desc: u64,
    avail: u64,
    used: u64,
}

/// A block device of `disk.len() / 512` sectors behind a transport that
/// needs no MMIO: it handles each request when notified, reading and
/// writing the pool's memory at device addresses.
struct FakeBlk {
    pool: &'static Pool,
    status: DeviceStatus,
    queue: Option<Queue>,
    last_avail: u16,
    config: [u8; 64],
    disk: Vec<u8>,
}

impl FakeBlk {
    fn new(pool: &'static Pool, sectors: usize) -> Self {
        let mut config = [0u8; 64];
        config[..8].copy_from_slice(&(sectors as u64).to_le_bytes());
        Self {
            pool,
            status: DeviceStatus::empty(),
            queue: None,
            last_avail: 0,
            config,
            disk: (0..sectors * SECTOR_SIZE).map(|i| (i / 7) as u8).collect(),
        }
    }

    /// The CPU address of `len` bytes at device address `dma` (identity
    /// translation), which must lie in the pool: the device reaches
    /// nothing else.
    fn at(&self, dma: u64, len: usize) -> *mut u8 {
        let start = self.pool.start().0;
        assert!(
            dma >= start && dma - start + len as u64 <= self.pool.len() as u64,
            "the device was given {dma:#x}+{len}, outside the pool"
        );
        self.pool
            .vaddr()
            .as_ptr()
            .wrapping_add((dma - start) as usize)
    }

    fn read<T: Copy>(&self, dma: u64) -> T {
        let p = self.at(dma, size_of::<T>()).cast::<T>();
        // SAFETY: `p` is inside the pool (checked), which lives for the
        // test; the driver does not write the ring parts the device reads
        // while the device handles a notification (one thread), and `T`
        // is a plain integer.
        unsafe { p.read_unaligned() }
    }

    fn write<T: Copy>(&self, dma: u64, v: T) {
        let p = self.at(dma, size_of::<T>()).cast::<T>();
        // SAFETY: as in `read`, for the device's own parts of the ring and
        // the buffers it may write.
        unsafe { p.write_unaligned(v) };
    }

    fn copy_out(&self, dma: u64, len: usize) -> Vec<u8> {
        let p = self.at(dma, len);
        // SAFETY: `len` bytes inside the pool (checked), a buffer the
        // driver shared and does not touch until the request completes.
        unsafe { std::slice::from_raw_parts(p, len) }.to_vec()
    }

    fn copy_in(&self, dma: u64, bytes: &[u8]) {
        let p = self.at(dma, bytes.len());
        // SAFETY: as in `copy_out`, for a buffer the device may write.
        unsafe { p.copy_from_nonoverlapping(bytes.as_ptr(), bytes.len()) };
    }

    /// Handles every request the driver made available.
    fn serve(&mut self) {
        let q = self.queue.expect("notified before queue_set");
        let avail_idx: u16 = self.read(q.avail + 2);
        while self.last_avail != avail_idx {
            let slot = u64::from(self.last_avail) % u64::from(q.size);
            let head: u16 = self.read(q.avail + 4 + 2 * slot);
            // The chain: header (driver to device), data, status.
            let mut chain = Vec::new();
            let mut i = head;
            loop {
                let d = q.desc + 16 * u64::from(i);
                let addr: u64 = self.read(d);
                let len: u32 = self.read(d + 8);
                let flags: u16 = self.read(d + 12);
                chain.push((addr, len as usize, flags & WRITE != 0));
                if flags & NEXT == 0 {
                    break;
                }
                i = self.read(d + 14);
            }
            let (hdr, hdr_len, hdr_w) = chain[0];
            assert!(hdr_len >= 16 && !hdr_w);
            let kind: u32 = self.read(hdr);
            let sector: u64 = self.read(hdr + 8);
            let (status, _, status_w) = *chain.last().unwrap();
            assert!(status_w);
            let mut written = 1;
            let mut at = sector as usize * SECTOR_SIZE;
            for &(addr, len, w) in &chain[1..chain.len() - 1] {
                match kind {
                    // VIRTIO_BLK_T_IN: the device writes the data.
                    0 => {
                        assert!(w);
                        self.copy_in(addr, &self.disk[at..at + len]);
                        written += len;
                    }
                    // VIRTIO_BLK_T_OUT: the device reads it.
                    1 => {
                        assert!(!w);
                        let data = self.copy_out(addr, len);
                        self.disk[at..at + len].copy_from_slice(&data);
                    }
                    _ => {}
                }
                at += len;
            }
            let ok = matches!(kind, 0 | 1);
            self.write::<u8>(status, if ok { 0 } else { 2 });
            let used_idx: u16 = self.read(q.used + 2);
            let entry = q.used + 4 + 8 * (u64::from(used_idx) % u64::from(q.size));
            self.write::<u32>(entry, u32::from(head));
            self.write::<u32>(entry + 4, written as u32);
            self.write::<u16>(q.used + 2, used_idx.wrapping_add(1));
            self.last_avail = self.last_avail.wrapping_add(1);
        }
    }
}

impl Transport for FakeBlk {
    fn device_type(&self) -> DeviceType {
        DeviceType::Block
    }
    fn read_device_features(&mut self) -> u64 {
        0
    }
    fn write_driver_features(&mut self, _: u64) {}
    fn max_queue_size(&mut self, _: u16) -> u32 {
        16
    }
    fn notify(&mut self, _: u16) {
        self.serve();
    }
    fn get_status(&self) -> DeviceStatus {
        self.status
    }
    fn set_status(&mut self, status: DeviceStatus) {
        self.status = status;
    }
    fn set_guest_page_size(&mut self, _: u32) {}
    fn requires_legacy_layout(&self) -> bool {
        false
    }
    fn queue_set(&mut self, _: u16, size: u32, desc: PhysAddr, avail: PhysAddr, used: PhysAddr) {
        // The rings come from `dma_alloc`: they must be in the pool.
        let _ = self.at(desc, 16 * size as usize);
        self.queue = Some(Queue {
            size,
            desc,
            avail,
            used,
        });
    }
    fn queue_unset(&mut self, _: u16) {
        self.queue = None;
    }
    fn queue_used(&mut self, _: u16) -> bool {
        self.queue.is_some()
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus::empty()
    }
    fn read_config_generation(&self) -> u32 {
        0
    }
    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T, Error> {
        let bytes = self
            .config
            .get(offset..offset + size_of::<T>())
            .ok_or(Error::ConfigSpaceTooSmall)?;
        T::read_from_bytes(bytes).map_err(|_| Error::ConfigSpaceTooSmall)
    }
    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        _: usize,
        _: T,
    ) -> Result<(), Error> {
        Ok(())
    }
}

swiotlb_virtio::hal!(struct BlkHal);

#[test]
fn virtio_blk_reads_and_writes_through_the_restricted_pool() {
    let pool = Pool::new_heap(1 << 20, PoolConfig::default()).unwrap();
    let platform: &'static Platform = Box::leak(Box::new(
        Platform::new().with_restricted(IoTlb::restricted("blk", pool)),
    ));
    let dev = Device::new(DmaMask::BITS_64).with_restricted_tlb("blk");
    BlkHal::bind(platform, dev, HalOptions::new()).unwrap();
    let tlb = &platform.restricted()[0];
    let transport = FakeBlk::new(tlb.first_pool(), 64);
    let mut blk = VirtIOBlk::<BlkHal, _>::new(transport).unwrap();
    assert_eq!(blk.capacity(), 64);
    let rings = tlb.stats().pool.io_tlb_used;
    assert!(rings > 0, "the rings come from the restricted pool");

    // A read: the device's bytes reach the driver's buffer on unshare.
    let mut buf = vec![0u8; 2 * SECTOR_SIZE];
    blk.read_blocks(3, &mut buf).unwrap();
    let want: Vec<u8> = (3 * SECTOR_SIZE..5 * SECTOR_SIZE)
        .map(|i| (i / 7) as u8)
        .collect();
    assert_eq!(buf, want);
    assert_eq!(tlb.stats().pool.io_tlb_used, rings, "every buffer unshared");

    // A write, then a read back of it.
    let data: Vec<u8> = (0..SECTOR_SIZE).map(|i| (i * 13) as u8).collect();
    blk.write_blocks(10, &data).unwrap();
    let mut back = vec![0u8; SECTOR_SIZE];
    blk.read_blocks(10, &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(tlb.stats().pool.io_tlb_used, rings);

    // Dropping the driver gives the rings back.
    drop(blk);
    assert_eq!(tlb.stats().pool.io_tlb_used, 0);
}
