//! The transport against a real qemu-storage-daemon (package qemu-utils),
//! one test at a time, each bounded in time.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    first_diff, patterned, read, serial, write, Setup, TestHal, DEVICE_TIMEOUT, IMAGE_LEN,
};
use swiotlb::{Attrs, Device, Direction, DmaMask, GrowConfig, Growth, IoTlb, TlbKind};
use swiotlb_host::{MemfdProvider, RegionListener};
use swiotlb_vhost::{Transport, VhostUserTransport};
use virtio_drivers::device::blk::{VirtIOBlk, SECTOR_SIZE};
use virtio_drivers::transport::{DeviceStatus, DeviceType};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The head of `struct virtio_blk_config` (virtio 1.2 §5.2.4).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct BlkConfigHead {
    capacity: u64,
    size_max: u32,
    seg_max: u32,
    cylinders: u16,
    heads: u8,
    sectors: u8,
    blk_size: u32,
}

#[test]
fn blk_io_round_trip_lands_at_the_right_sectors() {
    let _one = serial();
    let t0 = Instant::now();
    let setup = Setup::start();
    let region = TestHal::reset(8 << 20);
    let transport = setup.connect(std::slice::from_ref(&region));
    let h = transport.handle();
    assert_eq!(h.regions(), vec![region.clone()]);
    let mut blk = VirtIOBlk::<TestHal, _>::new(transport).expect("VirtIOBlk::new");
    assert_eq!(blk.capacity(), IMAGE_LEN / SECTOR_SIZE as u64);

    // 12 MiB of the 16 in requests of several sizes, the last 4 MiB left
    // zero.
    let sizes = [512usize, 4096, 8192, 65536, 512 * 1000, 1 << 20];
    let mut extents = Vec::new();
    let mut sector = 0usize;
    let mut k = 0;
    while (sector * SECTOR_SIZE) < (12 << 20) {
        let len = sizes[k % sizes.len()].min((12 << 20) - sector * SECTOR_SIZE);
        extents.push((sector, len));
        sector += len / SECTOR_SIZE;
        k += 1;
    }
    for &(s, len) in &extents {
        write(&mut blk, &h, s, &patterned(1, s, len)).unwrap();
    }
    for &(s, len) in extents.iter().rev() {
        let mut buf = vec![0xEEu8; len];
        read(&mut blk, &h, s, &mut buf).unwrap();
        let want = patterned(1, s, len);
        assert_eq!(
            first_diff(&buf, &want),
            None,
            "read back at sector {s}, {len} bytes"
        );
    }
    // A read that straddles two writes of different sizes.
    let (s, len) = extents[3];
    let mut buf = vec![0u8; len + 4096];
    read(&mut blk, &h, s, &mut buf).unwrap();
    assert_eq!(first_diff(&buf, &patterned(1, s, buf.len())), None);

    let c = h.counters();
    assert!(c.kicks >= 2 * extents.len() as u64, "{c:?}");
    assert!(c.calls > 0, "{c:?}");
    assert_eq!(c.rings_started, 1, "{c:?}");
    drop(blk);
    assert_eq!(h.counters().rings_stopped, 1);

    // The bytes landed at the right sectors of the image.
    let image = std::fs::read(&setup.image).unwrap();
    assert_eq!(image.len() as u64, IMAGE_LEN);
    let written = 12 << 20;
    assert_eq!(
        first_diff(&image[..written], &patterned(1, 0, written)),
        None
    );
    assert!(image[written..].iter().all(|&b| b == 0));
    eprintln!(
        "blk round trip: {} requests, {:?}",
        2 * extents.len(),
        t0.elapsed()
    );
}

#[test]
fn add_mem_reg_during_io() {
    let _one = serial();
    let setup = Setup::start();
    let region = TestHal::reset(4 << 20);
    let transport = setup.connect(std::slice::from_ref(&region));
    assert!(
        transport.mem_slots().is_some_and(|s| s >= 2),
        "qemu-storage-daemon offers CONFIGURE_MEM_SLOTS: {:?}",
        transport.protocol_features()
    );
    let h = transport.handle();
    let mut blk = VirtIOBlk::<TestHal, _>::new(transport).expect("VirtIOBlk::new");
    write(&mut blk, &h, 0, &patterned(2, 0, 65536)).unwrap();

    // A second memory after the device runs; bounce I/O into it.
    let (i, second) = TestHal::add_arena(4 << 20);
    h.region_added(&second).expect("ADD_MEM_REG");
    assert_eq!(h.regions(), vec![region.clone(), second.clone()]);
    TestHal::bounce_to(i);
    let before = TestHal::shares_in(i);
    for (s, len) in [(128usize, 1 << 20), (4096, 512), (8192, 3 << 20)] {
        write(&mut blk, &h, s, &patterned(3, s, len)).unwrap();
        let mut buf = vec![0u8; len];
        read(&mut blk, &h, s, &mut buf).unwrap();
        assert_eq!(first_diff(&buf, &patterned(3, s, len)), None, "sector {s}");
    }
    assert!(
        TestHal::shares_in(i) >= before + 18,
        "I/O bounced elsewhere"
    );

    // Back to the first memory; the second goes.
    TestHal::bounce_to(0);
    h.region_removed(&second);
    TestHal::remove_last_arena();
    assert_eq!(h.regions(), vec![region.clone()]);
    let c = h.counters();
    assert_eq!((c.regions_added, c.regions_removed), (1, 1), "{c:?}");
    assert!(h.failure().is_none(), "{:?}", h.failure());
    let mut buf = vec![0u8; 65536];
    read(&mut blk, &h, 0, &mut buf).unwrap();
    assert_eq!(first_diff(&buf, &patterned(2, 0, 65536)), None);
    drop(blk);

    let image = std::fs::read(&setup.image).unwrap();
    let at = 8192 * SECTOR_SIZE;
    assert_eq!(
        first_diff(&image[at..at + (3 << 20)], &patterned(3, 8192, 3 << 20)),
        None
    );
}

#[test]
fn config_read_at_an_offset_gives_that_field() {
    let _one = serial();
    let setup = Setup::start();
    let region = TestHal::reset(1 << 20);
    let mut t = setup.connect(std::slice::from_ref(&region));
    // qemu-storage-daemon offers VHOST_USER_F_PROTOCOL_FEATURES and
    // VHOST_F_LOG_ALL; the driver sees neither.
    let vhost_bits = (1u64 << 30) | (1 << 26);
    assert_eq!(t.raw_device_features() & vhost_bits, vhost_bits);
    assert_eq!(t.read_device_features() & vhost_bits, 0);
    assert_eq!(t.mem_slots(), Some(509));
    let head: BlkConfigHead = t.read_config_space(0).unwrap();
    assert_eq!(head.capacity, IMAGE_LEN / SECTOR_SIZE as u64);
    assert_eq!(head.blk_size, 512, "{head:?}");
    // Each field read on its own, at its offset, is the field: a transport
    // that asked the device for the offset would get capacity's bytes.
    assert_eq!(t.read_config_space::<u32>(20).unwrap(), head.blk_size);
    assert_eq!(t.read_config_space::<u32>(12).unwrap(), head.seg_max);
    assert_eq!(t.read_config_space::<u32>(8).unwrap(), head.size_max);
    assert_eq!(t.read_config_space::<u32>(4).unwrap(), 0);
    assert_eq!(t.read_config_space::<u16>(16).unwrap(), head.cylinders);
    // The last bytes of the 60, then past them: an error, not a panic.
    assert!(t.read_config_space::<u32>(56).is_ok());
    assert_eq!(
        t.read_config_space::<u32>(57),
        Err(virtio_drivers::Error::ConfigSpaceTooSmall)
    );
    assert_eq!(
        t.read_config_space::<u64>(usize::MAX - 3),
        Err(virtio_drivers::Error::ConfigSpaceTooSmall)
    );
    assert!(t.get_status().is_empty());
    assert_eq!(t.handle().counters().config_reads, 7);
    eprintln!("config head: {head:?}");
    drop(t);

    // qemu-storage-daemon does not answer a GET_CONFIG longer than its
    // 60 bytes at all: a transport told of 256 fails the device at the
    // deadline instead of hanging.
    let wrong = VhostUserTransport::connect_with_config_len(
        setup.daemon.socket(),
        DeviceType::Block,
        common::QUEUE_SIZE,
        &[region],
        Duration::from_millis(500),
        256,
    )
    .unwrap();
    let t0 = Instant::now();
    assert_eq!(
        wrong.read_config_space::<u64>(0),
        Err(virtio_drivers::Error::IoError)
    );
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert!(wrong
        .get_status()
        .contains(DeviceStatus::DEVICE_NEEDS_RESET));
    let failure = wrong.handle().failure().unwrap().to_string();
    assert!(failure.contains("GET_CONFIG"), "{failure}");
}

#[test]
fn daemon_killed_mid_way_fails_the_device() {
    let _one = serial();
    let t0 = Instant::now();
    let mut setup = Setup::start();
    let region = TestHal::reset(4 << 20);

    // A driver at work when the daemon dies.
    let transport = setup.connect(std::slice::from_ref(&region));
    let h = transport.handle();
    let mut blk = VirtIOBlk::<TestHal, _>::new(transport).expect("VirtIOBlk::new");
    write(&mut blk, &h, 0, &patterned(4, 0, 4096)).unwrap();

    // A bare transport on a second connection? The daemon serves one
    // frontend at a time; so a bare one comes after, on a new daemon.
    setup.daemon.kill();
    let mut buf = vec![0u8; 4096];
    let err = read(&mut blk, &h, 0, &mut buf).unwrap_err();
    assert!(err.contains("vhost-user"), "{err}");
    let failure = h.failure().expect("failure latched");
    assert!(failure.to_string().contains("needs a reset"), "{failure}");
    // Later requests fail at once, and nothing hangs or panics on drop.
    assert!(h.add_region(&region).is_err());
    drop(blk);

    // A bare transport: status, config, rings, after the daemon dies.
    let setup2 = Setup::start();
    let region2 = TestHal::reset(1 << 20);
    let mut t = setup2.connect(std::slice::from_ref(&region2));
    let _ = t.read_device_features();
    assert!(t.read_config_space::<u64>(0).is_ok());
    let mut setup2 = setup2;
    setup2.daemon.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !t.get_status().contains(DeviceStatus::DEVICE_NEEDS_RESET) {
        assert!(Instant::now() < deadline, "no DEVICE_NEEDS_RESET in 5 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        t.read_config_space::<u64>(0),
        Err(virtio_drivers::Error::IoError)
    );
    assert_eq!(t.max_queue_size(0), 0);
    t.write_driver_features(0);
    t.queue_set(0, 16, region2.dma, region2.dma + 4096, region2.dma + 8192);
    assert!(!t.queue_used(0));
    t.notify(0);
    t.set_status(DeviceStatus::empty());
    assert!(t.get_status().contains(DeviceStatus::DEVICE_NEEDS_RESET));
    // A driver started on it fails cleanly.
    assert!(VirtIOBlk::<TestHal, _>::new(t).is_err());
    assert!(t0.elapsed() < DEVICE_TIMEOUT * 3);
    eprintln!("killed daemon: {:?}", t0.elapsed());
}

#[test]
fn reset_stops_the_ring_and_the_driver_starts_again() {
    let _one = serial();
    let setup = Setup::start();
    let region = TestHal::reset(4 << 20);
    let transport = setup.connect(std::slice::from_ref(&region));
    let h = transport.handle();
    let mut blk = VirtIOBlk::<TestHal, _>::new(transport).expect("VirtIOBlk::new");
    write(&mut blk, &h, 64, &patterned(5, 64, 8192)).unwrap();
    // Dropping the driver unsets its queue (GET_VRING_BASE).
    drop(blk);
    assert_eq!(h.counters().rings_stopped, 1);
    // The handle holds the connection too; the daemon serves the next
    // frontend once it closes.
    drop(h);

    // A ring running on a transport, then a reset (status 0) stops it,
    // and a driver starts again on the same transport.
    let region2 = TestHal::reset(4 << 20);
    let mut t = setup.connect(std::slice::from_ref(&region2));
    let h2 = t.handle();
    let (ring, _) =
        <TestHal as virtio_drivers::Hal>::dma_alloc(2, virtio_drivers::BufferDirection::Both);
    t.write_driver_features(1 << 32);
    t.queue_set(0, 16, ring, ring + 256, ring + 4096);
    assert!(t.queue_used(0));
    assert_eq!(h2.counters().rings_started, 1);
    t.set_status(DeviceStatus::empty());
    assert!(!t.queue_used(0));
    assert_eq!(h2.counters().rings_stopped, 1);
    assert!(t.get_status().is_empty(), "{:?}", t.get_status());
    let mut blk = VirtIOBlk::<TestHal, _>::new(t).expect("VirtIOBlk::new after a reset");
    let mut buf = vec![0u8; 8192];
    read(&mut blk, &h2, 64, &mut buf).unwrap();
    assert_eq!(first_diff(&buf, &patterned(5, 64, 8192)), None);
    assert_eq!(h2.counters().rings_started, 2);
    drop(blk);
    drop(h2);

    // A ring outside every region of the table fails the device.
    let mut t = setup.connect(std::slice::from_ref(&region2));
    t.write_driver_features(1 << 32);
    let outside = region2.dma + region2.len;
    t.queue_set(0, 16, outside, outside + 256, outside + 4096);
    assert!(!t.queue_used(0));
    assert!(t.get_status().contains(DeviceStatus::DEVICE_NEEDS_RESET));
    let failure = t.handle().failure().unwrap().to_string();
    assert!(failure.contains("lies in no region"), "{failure}");
}

#[test]
fn a_growing_tlb_adds_its_pools_to_the_device_before_use() {
    let _one = serial();
    let setup = Setup::start();
    let arena = TestHal::reset(1 << 20);
    let t = setup.connect(std::slice::from_ref(&arena));
    let h = t.handle();

    let provider = Arc::new(MemfdProvider::new("swiotlb-vhost-grow"));
    let mut cfg = GrowConfig::new(256 << 10, 16 << 20);
    cfg.idle = 0;
    let tlb: IoTlb = IoTlb::growing(TlbKind::Default, Growth::new(provider.clone(), cfg)).unwrap();
    // Subscribing tells the device of the first pool (ADD_MEM_REG).
    let listener: Arc<dyn RegionListener> = Arc::new(h.clone());
    let _subscription = provider.subscribe(listener.clone()).unwrap();
    assert_eq!(h.regions().len(), 2);

    // Fill the first pool and more: the tlb grows, and each new pool is in
    // the device's table before any address in it is handed out.
    let dev = Device::new(DmaMask::BITS_64).with_force_bounce();
    let mut maps = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tlb.pool_count() < 2 {
        assert!(Instant::now() < deadline, "the tlb did not grow");
        // MAY_SLEEP: the tlb grows on this call's path (the provider runs
        // its listeners, so ADD_MEM_REG goes out here).
        match tlb.map_with_attrs(
            &dev,
            vec![7u8; 16 << 10],
            Direction::ToDevice,
            Attrs::MAY_SLEEP,
        ) {
            Ok(m) => {
                let dma = m.dma_addr().0;
                assert!(
                    h.regions().iter().any(|r| r.contains(dma, 16 << 10)),
                    "{dma:#x} handed out before the device had its region"
                );
                maps.push(m);
            }
            Err(e) => panic!("map: {e:?}"),
        }
    }
    for r in provider.regions() {
        assert!(
            h.regions().contains(&r),
            "pool {r:?} missing from the device"
        );
    }
    assert_eq!(h.counters().regions_added, provider.regions().len() as u64);

    // Give everything back; the grown pool goes, removed from the device
    // first.
    for m in maps.drain(..) {
        m.unmap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while tlb.pool_count() > 1 {
        assert!(
            Instant::now() < deadline,
            "the grown pool was not given back"
        );
        tlb.maintain().unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(h.regions().len(), 2);
    assert!(h.counters().regions_removed >= 1);
    assert!(h.failure().is_none(), "{:?}", h.failure());
    // The device still works.
    let mut blk = VirtIOBlk::<TestHal, _>::new(t).expect("VirtIOBlk::new");
    write(&mut blk, &h, 0, &patterned(6, 0, 4096)).unwrap();
}
