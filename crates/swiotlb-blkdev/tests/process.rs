//! The device as a process: spawned from its binary, driven over its socket
//! by a vhost-user frontend (rust-vmm `vhost`), stopped with SIGTERM.
//!
//! Every wait has a deadline; the guard type kills a device that outlives
//! its test.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const STARTUP: Duration = Duration::from_secs(5);
const STOP: Duration = Duration::from_secs(5);
const REPLY: Duration = Duration::from_secs(5);
const SECTOR: usize = 512;
const IMAGE_SECTORS: u64 = 2048;

/// A device process owned by a test: its socket, image and stats file live
/// in the test's temp dir; dropping it sends SIGTERM, waits a bounded time,
/// then SIGKILLs.
struct DeviceProcess {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl DeviceProcess {
    /// Start the device on a fresh image of `IMAGE_SECTORS` sectors (sector
    /// `s` filled with byte `s % 256`) and wait for its socket.
    fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let image: Vec<u8> = (0..IMAGE_SECTORS).flat_map(|s| [s as u8; SECTOR]).collect();
        std::fs::write(dir.path().join("disk.img"), image).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_swiotlb-blkdev"))
            .arg("--socket")
            .arg(dir.path().join("blk.sock"))
            .arg("--image")
            .arg(dir.path().join("disk.img"))
            .arg("--stats")
            .arg(dir.path().join("stats.json"))
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut dev = Self {
            child: Some(child),
            dir,
        };
        let deadline = Instant::now() + STARTUP;
        while !dev.socket().exists() {
            if let Some(status) = dev.child().try_wait().unwrap() {
                panic!("swiotlb-blkdev exited with {status} before creating its socket");
            }
            assert!(
                Instant::now() < deadline,
                "swiotlb-blkdev: no socket at {} after {STARTUP:?}",
                dev.socket().display()
            );
            sleep(Duration::from_millis(10));
        }
        dev
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().unwrap()
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("blk.sock")
    }

    fn image(&self) -> PathBuf {
        self.dir.path().join("disk.img")
    }

    fn stats(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.dir.path().join("stats.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn connect(&self) -> Frontend {
        Frontend::connect(self.socket(), 1).unwrap()
    }

    /// Wait up to `timeout` for the process to exit on its own.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child().try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then wait up to `timeout`.
    fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let pid = rustix::process::Pid::from_child(self.child());
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        self.wait_exit(timeout)
    }
}

impl Drop for DeviceProcess {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        if self.terminate(STOP).is_none() {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Guest memory the test shares with the device: `size` bytes at `gpa`,
/// backed by a file in the test's temp dir, and the vhost-user region for
/// it. The frontend's "userspace address" is the GPA moved up by `VA_OFFSET`.
struct Shared {
    mem: GuestMemoryMmap,
    file: File,
    gpa: u64,
    size: u64,
}

const VA_OFFSET: u64 = 0x7f00_0000_0000;

impl Shared {
    fn new(dir: &Path, name: &str, gpa: u64, size: u64) -> Self {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join(name))
            .unwrap();
        file.set_len(size).unwrap();
        let mem = GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(gpa),
            size as usize,
            Some(FileOffset::new(file.try_clone().unwrap(), 0)),
        )])
        .unwrap();
        Self {
            mem,
            file,
            gpa,
            size,
        }
    }

    fn region(&self) -> VhostUserMemoryRegionInfo {
        VhostUserMemoryRegionInfo {
            guest_phys_addr: self.gpa,
            memory_size: self.size,
            userspace_addr: self.gpa + VA_OFFSET,
            mmap_offset: 0,
            mmap_handle: self.file.as_raw_fd(),
        }
    }
}

/// Negotiate as a driver would: every offered feature but EVENT_IDX (so
/// that every completion interrupts), every protocol feature offered.
fn negotiate(fe: &mut Frontend) -> (u64, VhostUserProtocolFeatures) {
    fe.set_owner().unwrap();
    let features = fe.get_features().unwrap();
    fe.set_features(features & !(1 << VIRTIO_RING_F_EVENT_IDX))
        .unwrap();
    let proto = fe.get_protocol_features().unwrap();
    fe.set_protocol_features(proto).unwrap();
    // With REPLY_ACK every message waits for the device's answer, as QEMU's
    // do for memory-table changes: a kick (an eventfd, another channel)
    // must not overtake the ADD_MEM_REG before it.
    fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    (features, proto)
}

#[test]
fn frontend_negotiates_reads_config_and_stops_on_sigterm() {
    let mut dev = DeviceProcess::start(&[]);
    let mut fe = dev.connect();
    let (features, proto) = negotiate(&mut fe);
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_FLUSH,
    ] {
        assert_ne!(features & 1 << bit, 0, "feature bit {bit} offered");
    }
    assert!(proto.contains(
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::REPLY_ACK
    ));
    assert_eq!(fe.get_queue_num().unwrap(), 1);
    assert!(fe.get_max_mem_slots().unwrap() >= 2);

    let (_, config) = fe
        .get_config(0, 36, VhostUserConfigFlags::WRITABLE, &[0; 36])
        .unwrap();
    let capacity = u64::from_le_bytes(config[0..8].try_into().unwrap());
    assert_eq!(capacity, IMAGE_SECTORS);
    assert_eq!(u32::from_le_bytes(config[20..24].try_into().unwrap()), 512);

    let status = dev
        .terminate(STOP)
        .expect("swiotlb-blkdev exits on SIGTERM in time");
    assert!(status.success(), "exit status {status}");
    assert!(!dev.socket().exists(), "the socket is removed");
    assert_eq!(dev.stats()["requests"], 0);
}

#[test]
fn sigterm_before_any_frontend_exits_cleanly() {
    let mut dev = DeviceProcess::start(&[]);
    let status = dev
        .terminate(STOP)
        .expect("swiotlb-blkdev exits on SIGTERM in time");
    assert!(status.success(), "exit status {status}");
}

#[test]
fn bad_image_is_an_error_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_swiotlb-blkdev"))
        .arg("--socket")
        .arg(dir.path().join("s"))
        .arg("--image")
        .arg(dir.path().join("missing.img"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot open image"), "{err}");
}

/// A queue of `QSIZE` entries in the first shared region, its kick and call
/// eventfds, set up on the device.
const QSIZE: u16 = 16;

struct Ring<'a> {
    mock: MockSplitQueue<'a, GuestMemoryMmap>,
    mem: &'a GuestMemoryMmap,
    kick: EventFd,
    call: EventFd,
    next_desc: u16,
    completed: u16,
}

impl<'a> Ring<'a> {
    fn setup(fe: &mut Frontend, mem: &'a GuestMemoryMmap) -> Self {
        let mock = MockSplitQueue::create(mem, GuestAddress(0), QSIZE);
        fe.set_vring_num(0, QSIZE).unwrap();
        fe.set_vring_addr(
            0,
            &VringConfigData {
                queue_max_size: QSIZE,
                queue_size: QSIZE,
                flags: 0,
                desc_table_addr: mock.desc_table_addr().0 + VA_OFFSET,
                used_ring_addr: mock.used_addr().0 + VA_OFFSET,
                avail_ring_addr: mock.avail_addr().0 + VA_OFFSET,
                log_addr: None,
            },
        )
        .unwrap();
        fe.set_vring_base(0, 0).unwrap();
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let call = EventFd::new(EFD_NONBLOCK).unwrap();
        fe.set_vring_kick(0, &kick).unwrap();
        fe.set_vring_call(0, &call).unwrap();
        fe.set_vring_enable(0, true).unwrap();
        Self {
            mock,
            mem,
            kick,
            call,
            next_desc: 0,
            completed: 0,
        }
    }

    /// Post a chain and kick.
    fn post(&mut self, descs: &[(u64, u32, bool)]) {
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
        self.kick.write(1).unwrap();
    }

    /// Wait (bounded) for the next completion; its used length.
    fn complete(&mut self) -> u32 {
        let deadline = Instant::now() + REPLY;
        while self.mock.used().idx().load() == self.completed {
            assert!(
                Instant::now() < deadline,
                "swiotlb-blkdev: no completion {} after {REPLY:?}",
                self.completed
            );
            // The call eventfd says when; polling the used index too keeps a
            // lost interrupt from hanging the test.
            let _ = self.call.read();
            sleep(Duration::from_millis(1));
        }
        let len = self
            .mock
            .used()
            .ring()
            .ref_at(usize::from(self.completed))
            .unwrap()
            .load()
            .len();
        self.completed += 1;
        len
    }

    fn header(&self, at: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(at)).unwrap();
    }
}

/// Layout in the first region (1 MiB at 0): the ring at 0, header and
/// status at 0x1_0000, data at 0x2_0000. The second region, added while
/// running, sits at 16 MiB.
const HDR: u64 = 0x1_0000;
const STATUS: u64 = 0x1_0100;
const DATA: u64 = 0x2_0000;
const HOT: u64 = 0x100_0000;

#[test]
fn io_through_the_process_and_a_region_added_and_removed_while_running() {
    let mut dev = DeviceProcess::start(&[]);
    let mut fe = dev.connect();
    negotiate(&mut fe);
    let low = Shared::new(dev.dir.path(), "low.mem", 0, 0x10_0000);
    fe.set_mem_table(&[low.region()]).unwrap();
    let mut ring = Ring::setup(&mut fe, &low.mem);

    // A read into the first region.
    ring.header(HDR, VIRTIO_BLK_T_IN, 5);
    ring.post(&[
        (HDR, 16, false),
        (DATA, SECTOR as u32, true),
        (STATUS, 1, true),
    ]);
    assert_eq!(ring.complete(), SECTOR as u32 + 1);
    let mut byte = [0u8; 1];
    low.mem.read_slice(&mut byte, GuestAddress(STATUS)).unwrap();
    assert_eq!(u32::from(byte[0]), VIRTIO_BLK_S_OK);
    let mut data = vec![0u8; SECTOR];
    low.mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
    assert!(data.iter().all(|&b| b == 5));

    // A region added while running (ADD_MEM_REG) serves as a write's source.
    let hot = Shared::new(dev.dir.path(), "hot.mem", HOT, 0x10_0000);
    fe.add_mem_region(&hot.region()).unwrap();
    hot.mem
        .write_slice(&[0x42; SECTOR], GuestAddress(HOT))
        .unwrap();
    ring.header(HDR, VIRTIO_BLK_T_OUT, 9);
    ring.post(&[
        (HDR, 16, false),
        (HOT, SECTOR as u32, false),
        (STATUS, 1, true),
    ]);
    assert_eq!(ring.complete(), 1);
    low.mem.read_slice(&mut byte, GuestAddress(STATUS)).unwrap();
    assert_eq!(u32::from(byte[0]), VIRTIO_BLK_S_OK);
    let image = std::fs::read(dev.image()).unwrap();
    assert!(image[9 * SECTOR..10 * SECTOR].iter().all(|&b| b == 0x42));

    // Removed (REM_MEM_REG), the region is out of the device's reach: the
    // same request is an I/O error, not a crash.
    fe.remove_mem_region(&hot.region()).unwrap();
    ring.header(HDR, VIRTIO_BLK_T_OUT, 10);
    ring.post(&[
        (HDR, 16, false),
        (HOT, SECTOR as u32, false),
        (STATUS, 1, true),
    ]);
    assert_eq!(ring.complete(), 1);
    low.mem.read_slice(&mut byte, GuestAddress(STATUS)).unwrap();
    assert_eq!(u32::from(byte[0]), VIRTIO_BLK_S_IOERR);

    let status = dev
        .terminate(STOP)
        .expect("swiotlb-blkdev exits on SIGTERM in time");
    assert!(status.success(), "exit status {status}");
    let stats = dev.stats();
    assert_eq!(stats["requests"], 3);
    assert_eq!(stats["reads"], 1);
    assert_eq!(stats["writes"], 1);
    assert_eq!(stats["io_errors"], 1);
    assert_eq!(stats["bytes_written"], SECTOR as u64);
}

#[test]
fn fault_die_after_kills_the_process() {
    let mut dev = DeviceProcess::start(&["--fault-die-after", "1"]);
    let mut fe = dev.connect();
    negotiate(&mut fe);
    let low = Shared::new(dev.dir.path(), "low.mem", 0, 0x10_0000);
    fe.set_mem_table(&[low.region()]).unwrap();
    let mut ring = Ring::setup(&mut fe, &low.mem);
    ring.header(HDR, VIRTIO_BLK_T_IN, 0);
    ring.post(&[
        (HDR, 16, false),
        (DATA, SECTOR as u32, true),
        (STATUS, 1, true),
    ]);
    assert_eq!(ring.complete(), SECTOR as u32 + 1);
    ring.post(&[
        (HDR, 16, false),
        (DATA, SECTOR as u32, true),
        (STATUS, 1, true),
    ]);
    let status = dev.wait_exit(STOP).expect("the device dies in time");
    assert_eq!(status.code(), Some(swiotlb_blkdev::DIED_EXIT_CODE));
    assert_eq!(dev.stats()["requests"], 1);
}
