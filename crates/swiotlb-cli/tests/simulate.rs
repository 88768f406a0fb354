//! `swiotlb simulate`, run as a user runs it: the real binary, scripts in
//! files and on standard input.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// Runs `swiotlb simulate` with `args`, feeding `stdin` if given.
fn simulate(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_swiotlb"))
        .arg("simulate")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the swiotlb binary runs");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(text.as_bytes()).expect("script written");
    }
    child
        .wait_with_output()
        .expect("the swiotlb binary finishes")
}

/// Writes `script` to a file of its own and returns its path.
fn script_file(name: &str, script: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.ops"));
    std::fs::write(&path, script).expect("script file written");
    path
}

/// Runs `script` from a file with `args` and returns the parsed JSON,
/// checking that the run succeeded quietly.
fn json_run(name: &str, script: &str, args: &[&str]) -> Value {
    let path = script_file(name, script);
    let mut all = vec!["--ops", path.to_str().unwrap(), "--json"];
    all.extend_from_slice(args);
    let out = simulate(&all, None);
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stderr.is_empty(), "{name}: {:?}", out.stderr);
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

/// Runs `script` from standard input and returns the failed run's
/// standard error, checking exit code 2 and an empty standard output.
fn failing_run(script: &str, args: &[&str]) -> String {
    let mut all = vec!["--ops", "-"];
    all.extend_from_slice(args);
    let out = simulate(&all, Some(script));
    assert_eq!(out.status.code(), Some(2), "{script}");
    assert!(
        out.stdout.is_empty(),
        "{script}: printed {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

const SMALL: &str = "\
# three small maps, a page, and an NVMe-style buffer
map a 2K
map b 2048            # trailing comment
map c 0x800 dir=to

map page 4K dir=from
map nvme 3000 orig=0x12345a10 min_align=0xfff
sync nvme 0 100 cpu
sync c 16 32 device
unmap b
";

fn check_small(policy: &str) {
    let v = json_run(&format!("small-{policy}"), SMALL, &["--policy", policy]);
    let obj = v.as_object().unwrap();
    assert_eq!(
        obj.keys().collect::<Vec<_>>(),
        ["ops", "stats"],
        "{policy}: top-level keys"
    );
    let ops = v["ops"].as_array().unwrap();
    assert_eq!(ops.len(), 5, "{policy}: one entry per map");
    for (i, (id, line, size, dir)) in [
        ("a", 2, 2048, "bidi"),
        ("b", 3, 2048, "bidi"),
        ("c", 4, 2048, "to"),
        ("page", 6, 4096, "from"),
        ("nvme", 7, 3000, "bidi"),
    ]
    .into_iter()
    .enumerate()
    {
        let op = &ops[i];
        assert_eq!(op["id"], id, "{policy}");
        assert_eq!(op["line"], line, "{policy} {id}");
        assert_eq!(op["size"], size, "{policy} {id}");
        assert_eq!(op["dir"], dir, "{policy} {id}");
        assert!(op.get("error").is_none(), "{policy} {id}: {op}");
    }
    // Three 2 KiB maps take slots 0, 1 and 2.
    for (i, op) in ops[..3].iter().enumerate() {
        assert_eq!(op["slot"], i, "{policy}");
        assert_eq!(op["addr"], i * 2048, "{policy}");
        assert_eq!(op["nslots"], 1, "{policy}");
    }
    // A page-sized map is page aligned: slot 3 is skipped.
    assert_eq!(ops[3]["slot"], 4, "{policy}");
    assert_eq!(ops[3]["addr"], 0x2000, "{policy}");
    assert_eq!(ops[3]["nslots"], 2, "{policy}");
    // The original's offset under min_align_mask shows in the address.
    let addr = ops[4]["addr"].as_u64().unwrap();
    assert_eq!(addr & 0xfff, 0xa10, "{policy}: {addr:#x}");
    assert_eq!(ops[4]["nslots"], 2, "{policy}");
    assert_eq!(
        ops[4]["slot"].as_u64().unwrap(),
        addr / 2048,
        "{policy}: slot of the first byte"
    );

    let s = &v["stats"];
    let mut keys: Vec<&String> = s.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "area_used",
            "bytes_from_device",
            "bytes_to_device",
            "direct_maps",
            "failures",
            "hiwater_exact",
            "io_tlb_nslabs",
            "io_tlb_used",
            "io_tlb_used_hiwater",
        ],
        "{policy}: stats keys"
    );
    // One area: its high-water mark is the pool's, exactly.
    assert_eq!(s["hiwater_exact"], true, "{policy}");
    assert_eq!(s["io_tlb_nslabs"], 32768, "{policy}");
    assert_eq!(s["io_tlb_used"], 6, "{policy}");
    assert_eq!(s["io_tlb_used_hiwater"], 7, "{policy}");
    assert_eq!(s["area_used"], serde_json::json!([6]), "{policy}");
    assert_eq!(
        s["failures"],
        serde_json::json!({
            "too_large": 0, "pool_full": 0, "alignment": 0,
            "unreachable": 0, "misuse": 0
        }),
        "{policy}"
    );
    // Every map copies (CVE-2022-0854), plus the 32-byte device sync of
    // the to-device map.
    assert_eq!(
        s["bytes_to_device"],
        3 * 2048 + 4096 + 3000 + 32,
        "{policy}"
    );
    // The 100-byte CPU sync, and b's bidirectional unmap.
    assert_eq!(s["bytes_from_device"], 100 + 2048, "{policy}");
}

#[test]
fn json_shape_and_values_nextfit() {
    check_small("nextfit");
}

#[test]
fn json_shape_and_values_fast() {
    check_small("fast");
}

#[test]
fn fast_is_the_default_policy() {
    let default = json_run("default-policy", SMALL, &[]);
    let fast = json_run("fast-policy", SMALL, &["--policy", "fast"]);
    assert_eq!(default, fast);
}

#[test]
fn a_full_pool_is_an_entry_not_a_script_error() {
    let script = "\
map a 256K
map b 2K
sync b 0 1 cpu   # skipped: its map failed
unmap b          # skipped too
map huge 1M
unmap a
map b 2K
";
    for policy in ["fast", "nextfit"] {
        let v = json_run(
            &format!("full-{policy}"),
            script,
            &["--nslabs", "128", "--policy", policy],
        );
        let ops = v["ops"].as_array().unwrap();
        assert_eq!(ops.len(), 4);
        assert_eq!(ops[0]["nslots"], 128);
        let e = &ops[1]["error"];
        assert_eq!(e["kind"], "pool_full", "{policy}: {}", ops[1]);
        let msg = e["message"].as_str().unwrap();
        assert!(msg.starts_with("swiotlb buffer is full"), "{msg}");
        assert!(ops[1].get("slot").is_none());
        assert_eq!(ops[2]["error"]["kind"], "too_large");
        assert_eq!(ops[3]["slot"], 0, "{policy}: b maps once a is gone");
        let s = &v["stats"];
        assert_eq!(s["io_tlb_nslabs"], 128);
        assert_eq!(s["io_tlb_used"], 1);
        assert_eq!(s["io_tlb_used_hiwater"], 128);
        assert_eq!(s["failures"]["pool_full"], 1);
        assert_eq!(s["failures"]["too_large"], 1);
    }
}

#[test]
fn areas_and_cpu_hints() {
    let script = "map x 2K cpu=0\nmap y 2K cpu=3\nmap z 2K cpu=7\n";
    let v = json_run("areas", script, &["--nareas", "4", "--nslabs", "1024"]);
    let slots: Vec<_> = v["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["slot"].as_u64().unwrap())
        .collect();
    assert_eq!(slots, [0, 768, 769]);
    assert_eq!(v["stats"]["area_used"], serde_json::json!([1, 0, 0, 2]));
    // Four areas, and still Linux's one pool-wide mark.
    assert_eq!(v["stats"]["hiwater_exact"], true);
    assert_eq!(v["stats"]["io_tlb_used_hiwater"], 3);
}

/// Maps from CPUs 0-3 on four areas, each unmapped before its area's
/// next map, so that the areas peak at different times.
const STAGGERED: &str = "\
map a 5000 cpu=0
map b 3000 cpu=1
unmap a
map c 9000 cpu=2
unmap b
map d 2048 cpu=3
map e 7000 cpu=4
unmap c
map f 12000 cpu=5
unmap d
unmap e
map g 4097 cpu=6
unmap f
map h 10000 cpu=7
unmap g
";

/// The most slots the script holds at once, counted from its sizes alone
/// (ceil(size / 2048) a map, none of its maps has alignment options), and
/// the sum of each area's own peak, the area being `cpu % nareas` (every
/// map fits there).
fn script_peaks(script: &str, nareas: usize) -> (u64, u64) {
    let mut live = std::collections::HashMap::new();
    let (mut used, mut peak) = (0, 0);
    let mut area_used = vec![0; nareas];
    let mut area_peak = vec![0; nareas];
    for line in script.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w[..] {
            ["map", id, size, cpu] => {
                let n = size.parse::<u64>().unwrap().div_ceil(2048);
                let a = cpu.strip_prefix("cpu=").unwrap().parse::<usize>().unwrap() % nareas;
                live.insert(id, (a, n));
                used += n;
                area_used[a] += n;
                peak = peak.max(used);
                area_peak[a] = area_peak[a].max(area_used[a]);
            }
            ["unmap", id] => {
                let (a, n) = live.remove(id).unwrap();
                used -= n;
                area_used[a] -= n;
            }
            _ => panic!("{line}"),
        }
    }
    (peak, area_peak.iter().sum())
}

/// `io_tlb_used_hiwater` is Linux's: the most slots held at once, for
/// every policy and area count, not the sum of the areas' peaks.
#[test]
fn the_high_water_mark_is_linuxs_on_several_areas() {
    let (peak, summed) = script_peaks(STAGGERED, 4);
    assert_eq!((peak, summed), (11, 20), "the script tells the two apart");
    for policy in ["fast", "nextfit"] {
        for nareas in ["1", "2", "4"] {
            let args = ["--nareas", nareas, "--nslabs", "1024", "--policy", policy];
            let v = json_run("staggered", STAGGERED, &args);
            let s = &v["stats"];
            let what = format!("{policy}, {nareas} areas");
            assert_eq!(s["io_tlb_used_hiwater"], peak, "{what}");
            assert_eq!(s["hiwater_exact"], true, "{what}");
            // `h` is still live.
            assert_eq!(s["io_tlb_used"], 5, "{what}");
        }
    }
}

#[test]
fn bad_lines_name_the_line_and_exit_2() {
    for (script, line, problem) in [
        ("map a 2K\nmpa b 2K\n", 2, "unknown operation `mpa`"),
        ("# c\n\nmap a\n", 3, "needs an ID and a SIZE"),
        ("map a big\n", 1, "SIZE `big` is not a size"),
        ("map a 2K dir=up\n", 1, "to, from or bidi"),
        ("map a 2K min_align=0x1001\n", 1, "not 2^n - 1"),
        ("map a 2K flavour=mint\n", 1, "unknown option `flavour=`"),
        ("map a 2K\nsync a 0 10 both\n", 2, "not `both`"),
        ("unmap a b\n", 1, "one ID"),
        // Found while running: still nothing on standard output.
        ("map a 2K\nmap a 2K\n", 2, "`a` is already mapped (line 1)"),
        ("map a 2K\nunmap b\n", 2, "`b` is not mapped"),
        ("map a 2K\nunmap a\nunmap a\n", 3, "`a` is not mapped"),
        ("sync a 0 1 cpu\n", 1, "`a` is not mapped"),
        (
            "map a 2K\nsync a 2000 100 cpu\n",
            2,
            "run past the 2048-byte mapping",
        ),
    ] {
        let err = failing_run(script, &[]);
        let want = format!("<stdin> line {line}: ");
        assert!(err.contains(&want), "{script:?}: {err}");
        assert!(err.contains(problem), "{script:?}: {err}");
        assert!(err.starts_with("swiotlb: "), "{err}");
    }
}

#[test]
fn bad_lines_in_files_name_the_file() {
    let path = script_file("bad-line", "map a 2K\n\nunmap\n");
    let out = simulate(&["--ops", path.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(&format!("{} line 3: unmap takes one ID", path.display())),
        "{err}"
    );
}

/// Only the core's own messages start with `swiotlb`; every other one gets
/// the command's prefix, even when the script's name starts with it.
#[test]
fn a_script_named_swiotlb_still_gets_the_prefix() {
    let path = script_file("swiotlb", "map a\n");
    let out = Command::new(env!("CARGO_BIN_EXE_swiotlb"))
        .current_dir(path.parent().unwrap())
        .args(["simulate", "--ops", "swiotlb.ops"])
        .output()
        .expect("the swiotlb binary runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("swiotlb: swiotlb.ops line 1: map needs an ID and a SIZE"),
        "{err}"
    );
}

#[test]
fn missing_script_and_bad_options_exit_2() {
    let out = simulate(&["--ops", "/nonexistent/script.ops"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/script.ops"));
    for args in [
        &["--ops", "-", "--policy", "best"][..],
        &["--ops", "-", "--nslabs", "0"][..],
        &[][..],
    ] {
        let out = simulate(args, Some(""));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn stdin_gives_the_same_report_as_a_file() {
    let from_file = json_run("stdin-twin", SMALL, &["--policy", "nextfit"]);
    let out = simulate(
        &["--ops", "-", "--json", "--policy", "nextfit"],
        Some(SMALL),
    );
    assert!(out.status.success());
    let from_stdin: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(from_stdin, from_file);
}

#[test]
fn text_report_has_a_line_per_map_and_debugfs_stats() {
    let out = simulate(
        &["--ops", "-", "--nslabs", "128"],
        Some("map a 2K\nmap big 300K dir=to\n"),
    );
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("pool: 128 slots of 2048 bytes (256 KiB), 1 area, policy fast\n"),
        "{text}"
    );
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(
        rows[0].contains(" a ") && rows[0].contains("0x00000"),
        "{}",
        rows[0]
    );
    assert!(
        rows[1].contains("big") && rows[1].contains("(too_large)"),
        "{}",
        rows[1]
    );
    for stat in [
        "io_tlb_nslabs 128\n",
        "io_tlb_used 1\n",
        "io_tlb_used_hiwater 1\n",
        "area0_used 1\n",
        "failures_too_large 1\n",
        "bytes_to_device 2048\n",
    ] {
        assert!(text.contains(stat), "{stat:?} in {text}");
    }
}

#[test]
fn simulate_prints_a_table_for_ids_of_any_length() {
    // A format width above 65,535 panics in the standard library; an id
    // that long must still get its row, aligned with a shorter one.
    let long = "x".repeat(70_000);
    let script = format!("map {long} 2K\nmap b 4K\nunmap b\n");
    let out = simulate(&["--ops", "-"], Some(&script));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(rows.len(), 2, "{}", &text[..200]);
    assert!(rows[0].contains(&long));
    // The size column starts at the same place in both rows.
    assert_eq!(rows[0].find("2048"), rows[1].find("4096"));
}

#[test]
fn simulate_refuses_an_oversized_map_before_allocating() {
    // Under a 512 MiB address-space limit a 1 GiB original cannot even be
    // allocated: the answer must come from the size alone, as the engine
    // gives it (too large, counted), and the run go on.
    let bin = env!("CARGO_BIN_EXE_swiotlb");
    let mut child = Command::new("sh")
        .args(["-c", "ulimit -v 524288 && exec \"$0\" \"$@\""])
        .args([bin, "simulate", "--ops", "-", "--json", "--nslabs", "128"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh runs the swiotlb binary");
    let mut pipe = child.stdin.take().expect("stdin is piped");
    pipe.write_all(b"map huge 1024M\nmap small 2K\nunmap huge\nunmap small\n")
        .expect("script written");
    drop(pipe);
    let out = child.wait_with_output().expect("the run finishes");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ops"][0]["error"]["kind"], "too_large", "{v}");
    assert_eq!(v["ops"][1]["slot"], 0, "{v}");
    assert_eq!(v["stats"]["failures"]["too_large"], 1, "{v}");
}

#[test]
fn scripts_and_options_read_sizes_in_one_grammar() {
    // A script takes the units an option takes (KiB, G) ...
    let v = json_run(
        "one_grammar",
        "map a 2KiB\nmap b 0x1000\nmap c 1G\nsync a 0x10 1KiB cpu\nsync b 1K 0x2k device\n\
         unmap a\nunmap b\nunmap c\n",
        &[],
    );
    let sizes: Vec<&Value> = v["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| &o["size"])
        .collect();
    assert_eq!(sizes, [2048, 4096, 1 << 30]);
    assert_eq!(v["ops"][2]["error"]["kind"], "too_large");
    // ... and an option takes what a script takes (0x hex, K).
    let out = simulate(
        &["--profile", "burst", "--start", "0x100000", "--max", "512K"],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("--max 512 KiB is below --start 1 MiB"),
        "{err}"
    );
}

#[test]
fn simulate_applies_the_scripts_args_line_unless_an_option_overrides_it() {
    // Five 64 KiB maps: the fifth fails in a 128-slot (256 KiB) pool.
    let script = "# args: --nslabs 128 --policy nextfit\n\
                  map a 64K\nmap b 64K\nmap c 64K\nmap d 64K\nmap e 64K\n";
    let v = json_run("args_line", script, &[]);
    assert_eq!(v["stats"]["io_tlb_nslabs"], 128, "{v}");
    assert_eq!(v["ops"][4]["error"]["kind"], "pool_full", "{v}");
    // An option on the command line wins over the line.
    let v = json_run("args_line", script, &["--nslabs", "256"]);
    assert_eq!(v["stats"]["io_tlb_nslabs"], 256, "{v}");
    assert_eq!(v["ops"][4]["slot"], 128, "{v}");
    // The policy of the line applies too: the text report names it.
    let out = simulate(&["--ops", "-"], Some(script));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("pool: 128 slots"), "{text}");
    assert!(
        text.lines().next().unwrap().ends_with("policy nextfit"),
        "{text}"
    );
    // An option the line may not give stops the run, naming the line.
    let err = failing_run("# args: --json\nmap a 1\n", &[]);
    assert!(
        err.contains("line 1") && err.contains("may set only"),
        "{err}"
    );
}

#[test]
fn example_scripts_run_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ops");
    let mut examples: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ops"))
        .collect();
    examples.sort();
    assert!(
        examples.iter().any(|p| p.ends_with("basic.ops")),
        "{examples:?}"
    );
    for path in &examples {
        for policy in ["fast", "nextfit"] {
            for json in [false, true] {
                // Each example's `# args:` line applies by itself.
                let mut args = vec!["--ops", path.to_str().unwrap(), "--policy", policy];
                if json {
                    args.push("--json");
                }
                let out = simulate(&args, None);
                assert!(
                    out.status.success() && out.stderr.is_empty(),
                    "{args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                if json {
                    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                    // Every example unmaps what it maps.
                    assert_eq!(v["stats"]["io_tlb_used"], 0, "{args:?}");
                    assert!(!v["ops"].as_array().unwrap().is_empty());
                }
            }
        }
    }
}

#[test]
fn example_args_lines_set_their_pools() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ops");
    let run = |name: &str| {
        let path = dir.join(name);
        let out = simulate(&["--ops", path.to_str().unwrap(), "--json"], None);
        assert!(out.status.success(), "{name}");
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let full = run("full.ops");
    assert_eq!(full["stats"]["io_tlb_nslabs"], 128, "{full}");
    let areas = run("areas.ops");
    assert_eq!(areas["stats"]["area_used"].as_array().unwrap().len(), 4);
}

#[test]
fn basic_example_places_as_documented() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ops/basic.ops");
    let out = simulate(
        &[
            "--ops",
            path.to_str().unwrap(),
            "--json",
            "--policy",
            "nextfit",
        ],
        None,
    );
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let placed: Vec<(String, Value)> = v["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["id"].as_str().unwrap().to_owned(), o["slot"].clone()))
        .collect();
    let want: Vec<(String, Value)> = [
        ("cmd", 0.into()),
        ("rsp", 1.into()),
        ("ring", 2.into()),
        ("frame", 4.into()),
        ("huge", Value::Null),
        ("cmd2", 6.into()),
    ]
    .into_iter()
    .map(|(id, slot)| (id.to_owned(), slot))
    .collect();
    assert_eq!(placed, want);
}

/// Runs `swiotlb simulate` with `args` (a profile) and returns the parsed
/// JSON, checking that the run succeeded quietly.
fn profile_run(args: &[&str]) -> Value {
    let out = simulate(args, None);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

const MIB: u64 = 1 << 20;

fn field(v: &Value, name: &str) -> u64 {
    v[name]
        .as_u64()
        .unwrap_or_else(|| panic!("`{name}` is a count in {v}"))
}

#[test]
fn burst_profile_grows_to_the_live_set_and_gives_it_back() {
    // The command of the issue, word for word.
    let v = profile_run(&[
        "--profile",
        "burst",
        "--start",
        "1MiB",
        "--max",
        "512MiB",
        "--json",
    ]);
    for name in [
        "mappings",
        "failures",
        "peak_live_bytes",
        "peak_pool_bytes",
        "final_pool_bytes",
        "pools_added",
        "pools_removed",
        "transient_pools",
        "deferred",
        "max_wait_us",
        "timeouts",
        "elapsed_ms",
    ] {
        field(&v, name);
    }
    assert_eq!(v["profile"], "burst");
    assert_eq!(v["mode"], "may-sleep");
    assert_eq!(field(&v, "start_bytes"), MIB);
    assert_eq!(field(&v, "max_bytes"), 512 * MIB);
    assert_eq!(field(&v, "failures"), 0, "{v}");
    assert_eq!(field(&v, "data_errors"), 0, "{v}");
    assert_eq!(field(&v, "timeouts"), 0, "{v}");
    // The whole 256 MiB live set at once, in 4 KiB-256 KiB mappings.
    assert_eq!(field(&v, "peak_live_bytes"), 256 * MIB, "{v}");
    let mappings = field(&v, "mappings");
    assert!((1024..=65536).contains(&mappings), "{v}");
    let peak = field(&v, "peak_pool_bytes");
    assert!((256 * MIB..=512 * MIB).contains(&peak), "{v}");
    // Callers that may sleep grow the tlb themselves: no transient pool.
    assert_eq!(field(&v, "transient_pools"), 0, "{v}");
    assert!(field(&v, "pools_added") > 0, "{v}");
    // After the idle time: at most twice the start.
    assert!(field(&v, "final_pool_bytes") <= 2 * MIB, "{v}");
    assert_eq!(field(&v, "pools_removed"), field(&v, "pools_added"), "{v}");
}

#[test]
fn atomic_burst_is_served_by_transient_pools() {
    let v = profile_run(&[
        "--profile",
        "burst",
        "--mode",
        "atomic",
        "--start",
        "1MiB",
        "--max",
        "512MiB",
        "--json",
    ]);
    assert_eq!(v["mode"], "atomic");
    assert_eq!(field(&v, "failures"), 0, "{v}");
    assert_eq!(field(&v, "data_errors"), 0, "{v}");
    assert_eq!(field(&v, "peak_live_bytes"), 256 * MIB, "{v}");
    assert!(field(&v, "transient_pools") > 0, "{v}");
    // Callers that may not sleep never wait.
    assert_eq!(field(&v, "deferred"), 0, "{v}");
    assert!(field(&v, "final_pool_bytes") <= 2 * MIB, "{v}");
}

#[test]
fn deferred_burst_queues_instead_of_failing() {
    let v = profile_run(&["--profile", "burst", "--mode", "deferred", "--json"]);
    assert_eq!(v["mode"], "deferred");
    assert_eq!(field(&v, "failures"), 0, "{v}");
    assert_eq!(field(&v, "data_errors"), 0, "{v}");
    assert!(field(&v, "deferred") > 0, "{v}");
    assert_eq!(field(&v, "transient_pools"), 0, "{v}");
    assert!(field(&v, "final_pool_bytes") <= 2 * MIB, "{v}");
}

#[test]
fn steady_profile_neither_grows_nor_shrinks_after_warm_up() {
    let v = profile_run(&["--profile", "steady", "--json"]);
    assert_eq!(v["profile"], "steady");
    assert_eq!(field(&v, "failures"), 0, "{v}");
    assert_eq!(field(&v, "data_errors"), 0, "{v}");
    assert!(field(&v, "pools_added") > 0, "{v}");
    assert_eq!(field(&v, "pools_added_after_warmup"), 0, "{v}");
    assert_eq!(field(&v, "pools_removed_after_warmup"), 0, "{v}");
    assert!(field(&v, "final_pool_bytes") <= 2 * MIB, "{v}");
}

#[test]
fn a_tlb_at_its_limit_fails_and_the_table_says_so() {
    // 4 MiB cannot hold a 256 MiB live set: each worker stops at its
    // first failure, after a short wait.
    let out = simulate(
        &[
            "--profile",
            "burst",
            "--start",
            "1MiB",
            "--grow-by",
            "1MiB",
            "--max",
            "4MiB",
            "--wait-ms",
            "10",
            "--threads",
            "2",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("profile burst, may-sleep callers, 2 threads, seed 1\n"),
        "{text}"
    );
    assert!(
        text.contains("tlb: start 1 MiB, grow by 1 MiB, max 4 MiB"),
        "{text}"
    );
    let row = |name: &str| -> String {
        text.lines()
            .find_map(|l| l.trim_start().strip_prefix(name))
            .unwrap_or_else(|| panic!("no `{name}` row in {text}"))
            .trim()
            .to_owned()
    };
    assert_eq!(row("failures"), "2", "{text}");
    assert_eq!(row("timeouts"), "2", "{text}");
    assert_eq!(row("data errors"), "0", "{text}");
    assert_eq!(row("peak pool memory"), "4 MiB", "{text}");
    assert_eq!(row("final pool memory"), "1 MiB (1 pool)", "{text}");
}

#[test]
fn bad_profile_arguments_name_the_problem_and_exit_2() {
    for (args, problem) in [
        (&["--start", "0"][..], "--start 0 B is too small"),
        (
            &["--start", "4MiB", "--max", "1MiB"][..],
            "--max 1 MiB is below --start 4 MiB",
        ),
        (&["--grow-by", "4KiB"][..], "--grow-by 4 KiB is too small"),
        (&["--max", "lots"][..], "`lots` is not a size"),
        (&["--max", "512MB"][..], "write 512MiB"),
        (&["--threads", "0"][..], "--threads"),
        (&["--mode", "sometimes"][..], "sometimes"),
    ] {
        let mut all = vec!["--profile", "burst"];
        all.extend_from_slice(args);
        let out = simulate(&all, None);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(problem), "{args:?}: {err}");
    }
    // An unknown profile lists the known ones.
    let out = simulate(&["--profile", "avalanche"], None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("avalanche") && err.contains("burst, steady"),
        "{err}"
    );
    // Profile options without a profile, and a profile with a script.
    for args in [
        &["--ops", "-", "--start", "1MiB"][..],
        &["--ops", "-", "--profile", "burst"][..],
        &["--profile", "burst", "--nslabs", "128"][..],
    ] {
        let out = simulate(args, Some(""));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
