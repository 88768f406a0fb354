//! Connecting without a working device: errors name vhost-user, the socket
//! and the step, and come within the deadline.

use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use swiotlb_host::SharedMemory;
use swiotlb_vhost::{TransportError, VhostUserTransport};
use virtio_drivers::transport::DeviceType;

#[test]
fn nothing_listening_is_a_connect_error_naming_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("absent.sock");
    let mem = SharedMemory::new("t", 4096).unwrap();
    let t0 = Instant::now();
    let e = VhostUserTransport::connect(
        &sock,
        DeviceType::Block,
        16,
        &[mem.info(mem.as_ptr().as_ptr() as u64)],
        Duration::from_millis(200),
    )
    .unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert!(matches!(e, TransportError::Connect { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("vhost-user") && msg.contains("absent.sock"),
        "{msg}"
    );
}

#[test]
fn a_device_that_never_answers_times_out_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("mute.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    // Accepts, reads nothing, answers nothing; holds the connection until
    // the test ends.
    let mute = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let mem = SharedMemory::new("t", 4096).unwrap();
    let t0 = Instant::now();
    let e = VhostUserTransport::connect(
        &sock,
        DeviceType::Block,
        16,
        &[mem.info(mem.as_ptr().as_ptr() as u64)],
        Duration::from_millis(300),
    )
    .unwrap_err();
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    match &e {
        TransportError::Timeout { step, waited, .. } => {
            assert_eq!(*step, "GET_FEATURES");
            assert_eq!(*waited, Duration::from_millis(300));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(e.to_string().contains("mute.sock"), "{e}");
    drop(mute.join());
}

#[test]
fn an_empty_memory_table_is_refused() {
    let e = VhostUserTransport::connect(
        "/nonexistent/x.sock".as_ref(),
        DeviceType::Block,
        16,
        &[],
        Duration::from_millis(10),
    )
    .unwrap_err();
    assert!(
        matches!(e, TransportError::MemoryTable { regions: 0, .. }),
        "{e:?}"
    );
}
