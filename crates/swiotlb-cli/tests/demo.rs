//! `swiotlb demo` end to end: the unmodified virtio-drivers block driver
//! through the restricted pool to qemu-storage-daemon, to the builtin
//! device and to a backend someone else started; a dead device ends the
//! demo with an error within its timeout; bad options are named.
//!
//! One test at a time, every run killed at a deadline. No timing is
//! asserted beyond "gives up within its timeout": throughput on a shared
//! machine in a debug build measures nothing real.

mod common;

use std::time::Duration;

use common::{fill_pattern, image, run, serial, start_builtin, stop_builtin, Output};
use serde_json::Value;

/// Long enough for a debug build on a busy machine; a run past it is a
/// hang, killed.
const RUN_DEADLINE: Duration = Duration::from_secs(120);

const MIB: u64 = 1 << 20;

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no unsigned {key} in {v}"))
}

fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no number {key} in {v}"))
}

/// What every successful `demo --json` of `size` bytes reports: all of it
/// verified, through a pool the device's table holds and nothing else,
/// with no refused mapping.
fn check_report(out: &Output, device: &str, size: u64) -> Value {
    let v = out.json();
    assert_eq!(v["device"], device, "{v}");
    assert_eq!(u(&v, "bytes_verified"), size, "{v}");
    assert!(f(&v, "mb_per_s") > 0.0, "{v}");
    assert!(u(&v, "regions_shared") >= 1, "{v}");
    assert!(u(&v, "shared_bytes") > 0, "{v}");
    let regions = v["regions"].as_array().expect("a regions array");
    assert_eq!(regions.len() as u64, u(&v, "regions_shared"), "{v}");
    assert_eq!(
        regions.iter().map(|r| u(r, "len")).sum::<u64>(),
        u(&v, "shared_bytes"),
        "{v}"
    );
    assert!(u(&v, "io_tlb_used_hiwater") > 0, "{v}");
    assert_eq!(u(&v, "failures"), 0, "{v}");
    // Every written byte was copied into the pool (plus the 16-byte
    // request headers), and every read one out of it.
    assert!(u(&v, "bytes_to_device") >= size, "{v}");
    assert!(u(&v, "bytes_from_device") >= size, "{v}");
    v
}

#[test]
fn demo_with_qemu_storage_daemon_verifies_every_byte() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        &["demo", "--device", "qemu", "--size", "16M", "--json"],
        RUN_DEADLINE,
    )
    .success();
    check_report(&out, "qemu-storage-daemon", 16 * MIB);
    eprintln!("demo --device qemu --size 16M: {:?}", out.elapsed);
}

#[test]
fn demo_with_the_builtin_device_verifies_every_byte() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        &["demo", "--device", "builtin", "--size", "16M", "--json"],
        RUN_DEADLINE,
    )
    .success();
    check_report(&out, "builtin", 16 * MIB);
    eprintln!("demo --device builtin --size 16M: {:?}", out.elapsed);
}

/// `--device PATH`: the demo drives a backend it did not start, and the
/// pattern it reports verified is on that backend's image, at the right
/// offsets, and nothing past `--size` was touched.
#[test]
fn demo_against_a_running_backend_writes_its_image() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    image(&img, 32 * MIB);
    let mut dev = start_builtin(dir.path(), &img, &[]);
    let socket = dev.socket().to_str().expect("a UTF-8 path").to_owned();
    let out = run(
        dir.path(),
        &[
            "demo", "--device", &socket, "--size", "16M", "--seed", "7", "--json",
        ],
        RUN_DEADLINE,
    )
    .success();
    check_report(&out, &socket, 16 * MIB);
    let stats = stop_builtin(&mut dev, dir.path());
    assert_eq!(stats.io_errors, 0, "{stats:?}");
    assert_eq!(stats.bytes_written, 16 * MIB, "{stats:?}");
    assert_eq!(stats.bytes_read, 16 * MIB, "{stats:?}");

    let disk = std::fs::read(&img).unwrap();
    assert_eq!(disk.len() as u64, 32 * MIB);
    let (written, rest) = disk.split_at(16 * MIB as usize);
    let mut want = vec![0u8; written.len()];
    fill_pattern(7, 0, &mut want);
    if let Some(at) = written.iter().zip(&want).position(|(a, b)| a != b) {
        panic!(
            "image byte {at}: {:#04x}, the demo's pattern says {:#04x}",
            written[at], want[at]
        );
    }
    assert!(rest.iter().all(|&b| b == 0), "the demo wrote past --size");
}

/// A device that stops answering, or dies, mid-way: the demo gives up
/// after `--timeout` (a silent device) or at once (a device that closed
/// its socket) with a message saying so, instead of spinning in the
/// driver's blocking calls.
fn dead_device(fault: &str, timeout_s: u64, says: &str) {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    image(&img, 16 * MIB);
    let mut dev = start_builtin(dir.path(), &img, &[fault, "20"]);
    let socket = dev.socket().to_str().expect("a UTF-8 path").to_owned();
    let out = run(
        dir.path(),
        &[
            "demo",
            "--device",
            &socket,
            "--size",
            "16M",
            "--timeout",
            &timeout_s.to_string(),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{fault}: the demo must fail: {out:?}"
    );
    let limit = Duration::from_secs(if says == "went away" {
        timeout_s
    } else {
        timeout_s + 8
    });
    assert!(
        out.elapsed < limit,
        "{fault}: the demo took {:?} to give up on a dead device with --timeout {timeout_s}",
        out.elapsed
    );
    assert!(
        out.stderr.contains(says),
        "{fault}: the message must say {says:?}: {}",
        out.stderr
    );
    let stats = stop_builtin_any(&mut dev, dir.path());
    assert_eq!(stats.writes, 20, "{fault}: {stats:?}");
    eprintln!("{fault} 20: the demo gave up after {:?}", out.elapsed);
}

/// The counters of a device that may have died on purpose (exit status
/// 3), which writes them on its way out too.
fn stop_builtin_any(
    dev: &mut swiotlb_vhost::device::DeviceProcess,
    dir: &std::path::Path,
) -> swiotlb_blkdev::Stats {
    let status = dev.stop(common::STOP_GRACE);
    let path = common::stats_path(dir);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "no counters at {} ({status:?}): {e}; {}",
            path.display(),
            dev.log_tail()
        )
    });
    serde_json::from_str(&text).expect("the device's counters")
}

#[test]
fn demo_gives_up_on_a_device_that_hangs() {
    dead_device("--fault-hang-after", 2, "not answering");
}

#[test]
fn demo_gives_up_on_a_device_that_dies() {
    // At once, not after the 20 s of patience: a closed socket says the
    // device is gone.
    dead_device("--fault-die-after", 20, "went away");
}

fn bad_option(args: &[&str], option: &str, says: &str) {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), args, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        out.stderr.contains(option) && out.stderr.contains(says),
        "the message must name {option} and say {says:?}: {}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn demo_names_a_socket_that_does_not_exist() {
    bad_option(
        &["demo", "--device", "/no/such/socket", "--size", "1M"],
        "--device",
        "/no/such/socket does not exist",
    );
}

#[test]
fn demo_refuses_a_zero_size() {
    bad_option(
        &["demo", "--device", "builtin", "--size", "0"],
        "--size",
        "non-zero",
    );
}

/// `--compare`: a row per request size from 4 KiB to the largest mapping,
/// each with both throughputs and their ratio (not judged: see the
/// module's note).
#[test]
fn demo_compare_reports_each_request_size() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        &["demo", "--compare", "--size", "8M", "--json"],
        RUN_DEADLINE,
    )
    .success();
    let v = check_report(&out, "qemu-storage-daemon", 8 * MIB);
    let rows = v["compare"].as_array().expect("a compare array");
    let sizes: Vec<u64> = rows.iter().map(|r| u(r, "request_size")).collect();
    assert_eq!(sizes, [4096, 16384, 65536, 262144], "{v}");
    for r in rows {
        for key in ["bounced_mb_per_s", "unbounced_mb_per_s", "ratio"] {
            let x = f(r, key);
            assert!(x.is_finite() && x > 0.0, "{key} in {r}");
        }
    }
    eprintln!("demo --compare --size 8M: {:?}", out.elapsed);
}
