//! `swiotlb dt` on the checked-in example, as a user runs it.

use std::path::Path;
use std::process::Command;

fn example(name: &str) -> String {
    format!("{}/examples/dt/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn swiotlb(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_swiotlb"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn text_report() {
    let out = swiotlb(&["dt", &example("restricted.dtb")]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("/reserved-memory/restricted@50000000 (restricted)"),
        "{text}"
    );
    assert!(
        text.contains("devices: /soc@0/virtio@a000000, /soc@0/virtio@a000200"),
        "{text}"
    );
}

#[test]
fn json_report() {
    let out = swiotlb(&["dt", "--json", &example("restricted.dtb")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pools = v["pools"].as_array().unwrap();
    let kinds: Vec<_> = pools.iter().map(|p| p["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["restricted", "restricted", "shared"]);
    for p in pools {
        for key in ["name", "base", "size", "kind", "devices"] {
            assert!(!p[key].is_null(), "{key} missing in {p}");
        }
    }
}

#[test]
fn bad_file_fails_with_a_message() {
    let out = swiotlb(&["dt", &example("restricted.dts")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad magic"), "{err}");
}

/// The checked-in blob is what the checked-in source compiles to. Runs
/// only where `dtc` is installed; the other tests need only the blob.
#[test]
fn example_blob_is_up_to_date() {
    let out_dir = std::env::temp_dir().join(format!("swiotlb-dt-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).unwrap();
    let fresh = out_dir.join("restricted.dtb");
    let Ok(status) = Command::new("dtc")
        .args(["-q", "-I", "dts", "-O", "dtb", "-o"])
        .arg(&fresh)
        .arg(example("restricted.dts"))
        .status()
    else {
        eprintln!("dtc not installed: not checking the example blob");
        return;
    };
    assert!(status.success());
    let fresh = std::fs::read(&fresh).unwrap();
    let checked_in = std::fs::read(Path::new(&example("restricted.dtb"))).unwrap();
    let _ = std::fs::remove_dir_all(&out_dir);
    assert!(
        fresh == checked_in,
        "examples/dt/restricted.dtb is stale: recompile it with \
         `dtc -I dts -O dtb -o restricted.dtb restricted.dts`"
    );
}
