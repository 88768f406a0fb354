//! Bad arguments to the transport's memory table and waits, against a real
//! qemu-storage-daemon: each is refused before anything reaches the device,
//! which stays usable; an unbounded timeout is no deadline, not a panic.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{serial, Setup};
use swiotlb_host::{RegionInfo, SharedMemory};
use swiotlb_vhost::blk::Waited;
use swiotlb_vhost::{TransportError, VhostUserTransport};
use virtio_drivers::transport::DeviceType;

/// A region of its own for the device's table.
fn region(len: usize) -> (SharedMemory, RegionInfo) {
    let m = SharedMemory::new("swiotlb-test", len).unwrap();
    let info = m.info(m.as_ptr().as_ptr() as u64);
    (m, info)
}

fn why(e: TransportError) -> &'static str {
    match e {
        TransportError::BadRegion { why, .. } => why,
        e => panic!("not a BadRegion: {e}"),
    }
}

#[test]
fn bad_regions_are_refused_before_the_device_sees_them() {
    let _one = serial();
    let setup = Setup::start();
    let (_m, first) = region(1 << 20);
    let t = setup.connect(std::slice::from_ref(&first));
    let h = t.handle();

    // Inside the region the device holds.
    let mut inside = first.clone();
    inside.dma += 4096;
    inside.len = 4096;
    assert_eq!(
        why(h.add_region(&inside).unwrap_err()),
        "it overlaps a region the device holds"
    );
    // Empty, and wrapping past the top.
    let (_m2, mut other) = region(4096);
    let real = other.clone();
    other.len = 0;
    assert_eq!(why(h.add_region(&other).unwrap_err()), "it is empty");
    other.len = 1 << 20;
    other.dma = u64::MAX - 4095;
    assert_eq!(
        why(h.add_region(&other).unwrap_err()),
        "it wraps past the top of the address space"
    );
    // A region the device never held cannot be removed.
    assert_eq!(
        why(h.remove_region(&real).unwrap_err()),
        "the device does not hold it"
    );

    // Nothing reached the device: it is not failed, its table is the one
    // region, and a good region still goes in and out.
    assert!(h.failure().is_none(), "{:?}", h.failure());
    assert_eq!(h.regions(), vec![first.clone()]);
    h.add_region(&real).unwrap();
    assert_eq!(h.regions().len(), 2);
    h.remove_region(&real).unwrap();
    assert_eq!(h.regions(), vec![first]);
    assert!(h.failure().is_none(), "{}", setup.daemon.log_tail());
}

#[test]
fn a_timeout_too_long_to_add_is_no_deadline() {
    let _one = serial();
    let setup = Setup::start();
    let (_m, first) = region(1 << 20);
    // Connecting and every request with "no deadline".
    let t = VhostUserTransport::connect(
        setup.daemon.socket(),
        DeviceType::Block,
        16,
        std::slice::from_ref(&first),
        Duration::MAX,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let h = t.handle();
    assert_eq!(h.regions().len(), 1);
    // A queue that is not set up: nothing will come, at once.
    assert_eq!(h.wait(7, Duration::MAX), Waited::Gone);
    assert!(!h.wait_used(7, Duration::MAX));
}

#[test]
fn a_stale_socket_file_does_not_pass_for_a_started_daemon() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    // A socket file left behind by a daemon that was killed.
    let stale = std::os::unix::net::UnixListener::bind(dir.path().join("vhost-user-blk.sock"));
    drop(stale);
    assert!(dir.path().join("vhost-user-blk.sock").exists());
    // The image is missing: the daemon exits, and start says so with the
    // daemon's own words, instead of returning at once on the old file.
    let e = swiotlb_vhost::device::QemuStorageDaemon::start(
        dir.path(),
        &dir.path().join("missing.img"),
        Duration::from_secs(10),
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("exited"), "{text}");
    assert!(text.contains("missing.img"), "{text}");
}

/// The listener is held by its subscription: a device wired up in a
/// function of its own keeps hearing of new regions after the function
/// returns.
#[test]
fn a_subscription_keeps_the_device_listening() {
    let _one = serial();
    let setup = Setup::start();
    let provider = Arc::new(swiotlb_host::MemfdProvider::new("swiotlb-test"));
    let sub = {
        use swiotlb::provider::Provider as _;
        // Its regions are left to the end of the test process.
        let _first = provider
            .alloc(1 << 20, swiotlb::PhysAddr(u64::MAX))
            .unwrap();
        let table = provider.regions();
        let t = setup.connect(&table);
        let h = t.handle();
        let sub = provider
            .subscribe_knowing(Arc::new(h.clone()), &table)
            .unwrap();
        // The transport goes here; the handle kept below holds the socket.
        drop(t);
        (sub, h)
    };
    use swiotlb::provider::Provider as _;
    let grown = provider
        .alloc(1 << 20, swiotlb::PhysAddr(u64::MAX))
        .unwrap();
    assert_eq!(
        sub.1.regions().len(),
        2,
        "the device heard of the new region"
    );
    drop(sub.0);
    let later = provider
        .alloc(1 << 20, swiotlb::PhysAddr(u64::MAX))
        .unwrap();
    assert_eq!(sub.1.regions().len(), 2, "unsubscribed: not told");
    let _ = (grown, later);
}

/// Any depth is taken: more than a virtqueue holds is clamped, not an
/// allocation of `usize::MAX` slots.
#[test]
fn blk_run_takes_any_depth() {
    let _one = serial();
    let setup = Setup::start();
    let region = common::TestHal::reset(4 << 20);
    let t = setup.connect(std::slice::from_ref(&region));
    let h = t.handle();
    let mut disk = common::Blk::new(t).unwrap_or_else(|e| panic!("{e}"));
    let ops = (0..4u8).map(|i| swiotlb_vhost::blk::BlockOp {
        sector: u64::from(i) * 8,
        buf: vec![i; 4096],
        write: true,
    });
    let mut done = 0;
    swiotlb_vhost::blk::run(&mut disk, ops, usize::MAX, common::IO_TIMEOUT, &h, |_| {
        done += 1
    })
    .unwrap();
    assert_eq!(done, 4);
}
