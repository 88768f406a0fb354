//! `swiotlb bench` end to end: the rows exist and hold sane numbers.
//!
//! No timing is asserted: timings on a shared machine flake, and an
//! unoptimised test build measures nothing real anyway. What is checked is
//! the report's shape, which scripts comparing runs depend on.

use std::process::Command;

use serde_json::Value;

fn bench(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_swiotlb"))
        .arg("bench")
        .args(args)
        .output()
        .expect("the swiotlb binary runs");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
    let stderr = String::from_utf8(out.stderr).expect("UTF-8 errors");
    assert!(out.status.success(), "bench failed: {stderr}");
    (stdout, stderr)
}

fn rows(json: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(json).expect("bench --json prints JSON");
    v["rows"].as_array().expect("a rows array").clone()
}

/// Every row a report must have: name, policies, unit, and the `dir` or
/// `threads` values it must come in.
#[test]
fn json_report_has_every_row() {
    let (out, _) = bench(&["--quick", "--json", "--smoke"]);
    let rows = rows(&out);
    for r in &rows {
        for key in ["name", "policy", "size", "dir", "threads", "value", "unit"] {
            assert!(r.get(key).is_some(), "row without {key}: {r}");
        }
        let v = r["value"].as_f64();
        // Every row holds a measured, positive number; the resident-memory
        // row may be zero where memory is handed out lazily.
        if r["name"] != "init_6gib_resident" {
            assert!(
                v.is_some_and(|v| v.is_finite() && v > 0.0),
                "bad value: {r}"
            );
        }
    }
    let has = |name: &str, policy: &str, unit: &str, extra: &dyn Fn(&Value) -> bool| {
        rows.iter()
            .any(|r| r["name"] == name && r["policy"] == policy && r["unit"] == unit && extra(r))
    };
    let any = |_: &Value| true;
    for p in ["fast", "nextfit"] {
        for dir in ["to", "from"] {
            assert!(
                has("map_unmap", p, "ns", &|r| r["dir"] == dir),
                "map_unmap {p} {dir}"
            );
        }
        for fill in [0.1, 0.5, 0.9] {
            // The allocator alone (a lock hold per pair, per batch, and
            // searching every time), then the whole 1-byte map+unmap.
            for name in [
                "alloc_free",
                "alloc_free_batch",
                "alloc_free_alt",
                "map_unmap_1b",
            ] {
                assert!(
                    has(name, p, "ns", &|r| r["fill"].as_f64() == Some(fill)),
                    "{name} {p} {fill}"
                );
            }
        }
        for t in [1, 2] {
            assert!(
                has("throughput", p, "Mops", &|r| r["threads"] == t),
                "throughput {p} {t}"
            );
        }
        assert!(has("fill_at_first_failure", p, "ratio", &any), "{p} frag");
        assert!(
            has("fill_at_first_failure_uniform", p, "ratio", &any),
            "{p} frag, uniform sizes"
        );
        assert!(has("metadata_per_slot", p, "bytes", &any), "{p} metadata");
        assert!(has("init_6gib", p, "ms", &any), "{p} init");
    }
    for dir in ["hot", "walk"] {
        assert!(has("memcpy", "memcpy", "ns", &|r| r["dir"] == dir), "{dir}");
    }
    // Unmap lookup in a growing tlb: our search and Linux's walk, and a
    // whole pair, at each pool count.
    for pools in [1, 100, 10_000] {
        for p in ["fast", "nextfit"] {
            assert!(
                has("lookup", p, "ns", &|r| r["pools"] == pools),
                "lookup {p} {pools}"
            );
        }
        assert!(
            has("map_unmap_pools", "fast", "ns", &|r| r["pools"] == pools),
            "map_unmap_pools {pools}"
        );
    }
    assert!(has("grow", "fast", "us", &any), "grow");
    // What the lookup index costs a growth among many pools.
    for pools in [100, 10_000] {
        assert!(
            has("grow", "fast", "us", &|r| r["pools"] == pools),
            "grow at {pools} pools"
        );
    }
    for t in [1, 2] {
        assert!(
            has("throughput_exact_hiwater", "fast", "Mops", &|r| r
                ["threads"]
                == t),
            "throughput_exact_hiwater {t}"
        );
    }
    for size in [64, 512, 1500, 4096, 65536, 262144] {
        assert!(
            has("map_unmap", "fast", "ns", &|r| r["size"] == size),
            "map_unmap size {size}"
        );
    }
    let ratio = |r: &Value| r["value"].as_f64().unwrap_or(0.0);
    for r in rows.iter().filter(|r| r["unit"] == "ratio") {
        assert!(ratio(r) <= 1.0, "a fill ratio above 1: {r}");
    }
}

#[test]
fn only_limits_the_parts_and_the_table_has_ratios() {
    let (out, _) = bench(&["--smoke", "--json", "--only", "metadata"]);
    let rows = rows(&out);
    assert_eq!(rows.len(), 2, "{out}");
    assert!(rows.iter().all(|r| r["name"] == "metadata_per_slot"));

    let (table, _) = bench(&["--smoke", "--only", "metadata"]);
    assert!(table.contains("metadata_per_slot"), "{table}");
    assert!(table.contains("ratios"), "{table}");
    assert!(table.contains("fast/nextfit"), "{table}");
}

/// The map rows come with `NextFit`'s target ratios, one per size that
/// has a target, named with the target.
#[test]
fn map_rows_have_the_nextfit_target_ratios() {
    let (out, _) = bench(&["--smoke", "--json", "--only", "map"]);
    let v: Value = serde_json::from_str(&out).expect("bench --json prints JSON");
    let ratios = v["ratios"].as_array().expect("a ratios array");
    for (size, target) in [("64 B", "5.3"), ("512 B", "6.9"), ("4 KiB", "10")] {
        let name = format!("map_unmap to {size} nextfit/fast (target <= {target})");
        let r = ratios.iter().find(|r| r["name"] == name.as_str());
        assert!(
            r.is_some_and(|r| r["value"].as_f64().is_some_and(|x| x > 0.0)),
            "no ratio {name:?} in {out}"
        );
    }
}

#[test]
fn unoptimised_builds_say_so() {
    let (_, err) = bench(&["--smoke", "--json", "--only", "metadata"]);
    assert_eq!(
        err.contains("without optimisations"),
        cfg!(debug_assertions),
        "{err}"
    );
}

/// The fragmentation rows follow one protocol, name it in every row, and
/// say where a run departs from it.
#[test]
fn fragmentation_rows_state_their_protocol() {
    let (out, _) = bench(&["--smoke", "--json", "--only", "frag"]);
    let protocol = rows(&out);
    let names: Vec<&str> = protocol.iter().filter_map(|r| r["name"].as_str()).collect();
    for name in [
        "fill_at_first_failure",
        "slots_at_first_failure",
        "fill_at_first_failure_uniform",
        "slots_at_first_failure_uniform",
    ] {
        assert_eq!(names.iter().filter(|&&n| n == name).count(), 2, "{out}");
    }
    for r in &protocol {
        let note = r["note"].as_str().unwrap_or("");
        for part in [
            "pool of 2 areas, one CPU",
            "live mappings of 512 B-64 KiB",
            "replaced at random for 1,000 steps (--smoke; the protocol runs 200,000)",
            "smallest failing N by bisection",
        ] {
            assert!(note.contains(part), "{part:?} missing: {r}");
        }
    }

    let (out, _) = bench(&[
        "--smoke", "--json", "--only", "frag", "--areas", "1", "--steps", "300",
    ]);
    for r in &rows(&out) {
        let note = r["note"].as_str().unwrap_or("");
        assert!(note.contains("pool of 1 area, one CPU"), "{r}");
        assert!(
            note.contains("for 300 steps (--steps; the protocol runs 200,000)"),
            "{r}"
        );
    }
}

/// `--segment` changes the fragmentation pools' geometry, says so in every
/// row it touches, and refuses a segment a pool cannot have.
#[test]
fn segment_sets_the_fragmentation_geometry() {
    let (out, _) = bench(&["--smoke", "--json", "--only", "frag", "--segment", "512"]);
    let rows = rows(&out);
    assert_eq!(rows.len(), 8, "{out}");
    for r in &rows {
        let note = r["note"].as_str().unwrap_or("");
        assert!(note.contains("segments of 512 slots"), "{r}");
    }
    let (out, _) = bench(&["--smoke", "--json", "--only", "frag"]);
    assert!(
        !out.contains("segments of"),
        "default geometry named: {out}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_swiotlb"))
        .args(["bench", "--smoke", "--only", "frag", "--segment", "100"])
        .output()
        .expect("the swiotlb binary runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a power of two"), "{err}");
}

/// `--only dt` times the device tree reader alone: one `dt_parse` row per
/// blob shape, each naming the blob's size and its pool and device counts.
#[test]
fn dt_rows_name_the_blob() {
    let (out, _) = bench(&["--smoke", "--json", "--only", "dt"]);
    let rows = rows(&out);
    assert_eq!(rows.len(), 3, "{out}");
    for r in &rows {
        assert_eq!(r["name"], "dt_parse", "{r}");
        assert_eq!(r["unit"], "ms", "{r}");
        assert!(r["size"].as_u64().is_some_and(|s| s > 0), "{r}");
        assert!(r["pools"].as_u64().is_some_and(|p| p > 0), "{r}");
        assert!(r["devices"].as_u64().is_some(), "{r}");
        assert!(r["value"].as_f64().is_some_and(|v| v > 0.0), "{r}");
    }
    // One pool shared by many devices, many pools with one device each,
    // pools alone.
    let counts: Vec<_> = rows
        .iter()
        .map(|r| (r["pools"].as_u64(), r["devices"].as_u64()))
        .collect();
    assert_eq!(counts[0].0, Some(1));
    assert_eq!(counts[1].0, counts[1].1);
    assert_eq!(counts[2].1, Some(0));

    let (table, _) = bench(&["--smoke", "--only", "dt"]);
    assert!(table.contains("dt_parse"), "{table}");
}
