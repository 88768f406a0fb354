//! What the device tests share: one test at a time, the builtin device
//! and qemu-storage-daemon as processes owned by guards, the `swiotlb`
//! command run with a deadline, and the demo's data pattern.
//!
//! qemu-storage-daemon is required, as in `ci/vhost.sh`: a missing one
//! fails the test that needs it, with the package to install, rather than
//! skipping it.

#![allow(dead_code, reason = "each test binary uses a part")]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use swiotlb_vhost::device::{DeviceError, DeviceProcess, QemuStorageDaemon};

/// The command under test, with the builtin device behind `blkdev`.
pub const BIN: &str = env!("CARGO_BIN_EXE_swiotlb");

/// Deadline of a device's start-up and of the transport's every reply.
pub const DEVICE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a device stopped at the end of a test may take to exit after
/// SIGTERM (it writes its `--stats` file then) before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Device tests share the machine's two cores, the daemons and the `Hal`
/// types' static slots: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Takes the one-at-a-time lock; a failed test does not poison it for the
/// others.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A zeroed raw image of `len` bytes at `path`.
pub fn image(path: &Path, len: u64) {
    File::create(path)
        .and_then(|f| f.set_len(len))
        .unwrap_or_else(|e| panic!("the disk image {}: {e}", path.display()));
}

/// The builtin device (`swiotlb blkdev`) over `image`, its socket
/// (`builtin-blk.sock`), log and `--stats` file (`builtin-stats.json`)
/// in `dir`, with the extra flags `extra` (fault knobs).
pub fn start_builtin(dir: &Path, image: &Path, extra: &[&str]) -> DeviceProcess {
    let socket = dir.join("builtin-blk.sock");
    let mut cmd = Command::new(BIN);
    cmd.arg("blkdev")
        .arg("--socket")
        .arg(&socket)
        .arg("--image")
        .arg(image)
        .arg("--stats")
        .arg(stats_path(dir))
        .args(extra);
    DeviceProcess::start(
        "the builtin vhost-user-blk device",
        None,
        cmd,
        &socket,
        &dir.join("builtin-blk.log"),
        DEVICE_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Where [`start_builtin`] has the device write its counters.
pub fn stats_path(dir: &Path) -> PathBuf {
    dir.join("builtin-stats.json")
}

/// Stops the builtin device (SIGTERM; it writes its counters on the way
/// out) and reads the counters it wrote.
pub fn stop_builtin(dev: &mut DeviceProcess, dir: &Path) -> swiotlb_blkdev::Stats {
    let status = dev.stop(STOP_GRACE);
    assert!(
        status.is_some_and(|s| s.success()),
        "{} did not stop cleanly within {STOP_GRACE:?} of SIGTERM ({status:?}): {}",
        dev.name(),
        dev.log_tail()
    );
    let path = stats_path(dir);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: no counters at {}: {e}", dev.name(), path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{}: counters {text:?} unreadable: {e}", dev.name()))
}

/// qemu-storage-daemon exporting `image`, its socket and log in `dir`.
/// A missing daemon fails the test, naming the package to install.
pub fn start_qsd(dir: &Path, image: &Path) -> QemuStorageDaemon {
    match QemuStorageDaemon::start(dir, image, DEVICE_TIMEOUT) {
        Ok(d) => d,
        Err(e @ DeviceError::NotInstalled { .. }) => panic!(
            "{e}; these tests need a real qemu-storage-daemon and are not skipped without one"
        ),
        Err(e) => panic!("{e}"),
    }
}

/// A run of the `swiotlb` command that finished.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Output {
    /// Stdout as JSON, failing with both streams if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}):\nstdout: {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// Fails with both streams unless the command succeeded.
    pub fn success(self) -> Self {
        assert!(
            self.status.success(),
            "swiotlb failed ({}):\nstderr: {}\nstdout: {}",
            self.status,
            self.stderr,
            self.stdout
        );
        self
    }
}

/// Kills the command if the test fails before it ends.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `swiotlb ARGS`, its output in files of `dir`; a run that is not
/// over within `deadline` is killed and fails the test.
pub fn run(dir: &Path, args: &[&str], deadline: Duration) -> Output {
    let out_path = dir.join("swiotlb.stdout");
    let err_path = dir.join("swiotlb.stderr");
    let out = File::create(&out_path).expect("a stdout file");
    let err = File::create(&err_path).expect("a stderr file");
    let t = Instant::now();
    let child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("the swiotlb binary runs");
    let mut running = Running(Some(child));
    let status = loop {
        let child = running.0.as_mut().expect("running");
        if let Some(status) = child.try_wait().expect("waiting for swiotlb") {
            break status;
        }
        if t.elapsed() >= deadline {
            drop(running);
            panic!(
                "swiotlb {} still running after {deadline:?}; killed. stderr: {}",
                args.join(" "),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    running.0 = None;
    Output {
        status,
        stdout: std::fs::read_to_string(&out_path).expect("stdout"),
        stderr: std::fs::read_to_string(&err_path).expect("stderr"),
        elapsed: t.elapsed(),
    }
}

/// The 8 bytes of the demo's pattern at disk offset `word * 8` for
/// `seed`: `crates/swiotlb-cli/src/demo/workload.rs`, restated so a test
/// can check an image the demo wrote (SplitMix64 of the word's index and
/// the seed).
pub fn pattern_word(seed: u64, word: u64) -> u64 {
    let mut z = seed ^ word.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `buf` filled with the demo's pattern for the disk bytes at `offset` (a
/// multiple of 8).
pub fn fill_pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let w = pattern_word(seed, offset / 8 + i as u64).to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
}

/// `len` bytes of the operating system's randomness.
pub fn random_bytes(len: usize) -> Vec<u8> {
    use std::io::Read as _;
    let mut v = vec![0u8; len];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut v))
        .expect("/dev/urandom");
    v
}
