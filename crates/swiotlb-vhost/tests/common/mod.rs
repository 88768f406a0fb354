//! What the device tests share: a qemu-storage-daemon over a raw image in
//! a temp dir, a block driver over the transport, and I/O with deadlines.

#![allow(dead_code, reason = "each test binary uses a part")]

pub mod hal;

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use swiotlb_host::RegionInfo;
use swiotlb_vhost::device::QemuStorageDaemon;
use swiotlb_vhost::{DeviceHandle, VhostUserTransport};
use virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk, SECTOR_SIZE};
use virtio_drivers::transport::DeviceType;

pub use hal::TestHal;

/// The image every test exports.
pub const IMAGE_LEN: u64 = 16 << 20;
/// The transport's queue size (virtio-drivers' blk driver uses 16).
pub const QUEUE_SIZE: u16 = 256;
/// Deadline of daemon start-up, of connecting, and of every reply.
pub const DEVICE_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of one request.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The device tests share the daemon binary, the Hal's static memory and
/// the machine: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Takes the one-at-a-time lock (a failed test does not poison it for
/// the others).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A daemon over a fresh zeroed image, in a temp dir both live in.
pub struct Setup {
    pub daemon: QemuStorageDaemon,
    pub image: PathBuf,
    // Last, so the daemon stops before its directory goes.
    pub dir: tempfile::TempDir,
}

impl Setup {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(IMAGE_LEN))
            .expect("raw image");
        let daemon = QemuStorageDaemon::start(dir.path(), &image, DEVICE_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        Self { daemon, image, dir }
    }

    pub fn connect(&self, regions: &[RegionInfo]) -> VhostUserTransport {
        VhostUserTransport::connect(
            self.daemon.socket(),
            DeviceType::Block,
            QUEUE_SIZE,
            regions,
            DEVICE_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e}\ndaemon log: {}", self.daemon.log_tail()))
    }
}

pub type Blk = VirtIOBlk<TestHal, VhostUserTransport>;

/// Waits for `token` to be used, on the call eventfd, up to `IO_TIMEOUT`.
fn wait_token(blk: &mut Blk, h: &DeviceHandle, token: u16, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        match blk.peek_used() {
            Some(t) if t == token => return Ok(()),
            Some(t) => return Err(format!("{what}: used token {t}, expected {token}")),
            None => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "vhost-user-blk at {}: {what} not used within {IO_TIMEOUT:?}",
                h.socket().display()
            ));
        }
        if !h.wait_used(0, left.min(Duration::from_millis(200))) {
            if let Some(e) = h.failure() {
                return Err(format!("{what}: {e}"));
            }
        }
    }
}

/// Writes `data` at `sector`, waiting at most `IO_TIMEOUT`.
pub fn write(blk: &mut Blk, h: &DeviceHandle, sector: usize, data: &[u8]) -> Result<(), String> {
    let mut req = BlkReq::default();
    let mut resp = BlkResp::default();
    // SAFETY: `req`, `data` and `resp` are not touched until the request
    // completes (or this test fails with them leaked to the device, whose
    // memory is the Hal's bounce copy, not these buffers).
    let token = unsafe { blk.write_blocks_nb(sector, &mut req, data, &mut resp) }
        .map_err(|e| format!("write at sector {sector}: {e}"))?;
    wait_token(blk, h, token, &format!("write at sector {sector}"))?;
    // SAFETY: the same buffers as the submission.
    unsafe { blk.complete_write_blocks(token, &req, data, &mut resp) }
        .map_err(|e| format!("write at sector {sector}: {e}"))
}

/// Reads `buf.len()` bytes at `sector`, waiting at most `IO_TIMEOUT`.
pub fn read(blk: &mut Blk, h: &DeviceHandle, sector: usize, buf: &mut [u8]) -> Result<(), String> {
    let mut req = BlkReq::default();
    let mut resp = BlkResp::default();
    // SAFETY: as in `write`.
    let token = unsafe { blk.read_blocks_nb(sector, &mut req, buf, &mut resp) }
        .map_err(|e| format!("read at sector {sector}: {e}"))?;
    wait_token(blk, h, token, &format!("read at sector {sector}"))?;
    // SAFETY: the same buffers as the submission.
    unsafe { blk.complete_read_blocks(token, &req, buf, &mut resp) }
        .map_err(|e| format!("read at sector {sector}: {e}"))
}

/// The byte at absolute image offset `at` of pattern `seed`: differs from
/// sector to sector and within a sector, so a misplaced sector shows.
pub fn pattern(seed: u8, at: u64) -> u8 {
    let sector = at / SECTOR_SIZE as u64;
    let within = at % SECTOR_SIZE as u64;
    (sector.wrapping_mul(131) ^ within.wrapping_mul(7) ^ u64::from(seed)) as u8
}

pub fn patterned(seed: u8, sector: usize, len: usize) -> Vec<u8> {
    let base = (sector * SECTOR_SIZE) as u64;
    (0..len as u64).map(|i| pattern(seed, base + i)).collect()
}

/// First mismatching offset of two buffers.
pub fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}
