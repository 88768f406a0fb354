//! `swiotlb dt`: the DMA pools of a flattened device tree and the devices
//! that use them.

use crate::error::Error;
use crate::units::human;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;
use swiotlb::dt::{parse, DtPools};
use swiotlb::PhysAddr;

/// Arguments of `swiotlb dt`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// A compiled device tree (`.dtb`).
    file: PathBuf,
    /// Print JSON: `{"pools": [{"name", "path", "base", "size", "end",
    /// "kind", "devices"}]}`, addresses and sizes as numbers.
    #[arg(long)]
    json: bool,
}

/// Runs `swiotlb dt`.
pub(crate) fn run(args: &Args) -> Result<(), Error> {
    let blob = std::fs::read(&args.file).map_err(|source| Error::Read {
        path: args.file.clone(),
        source,
    })?;
    print!("{}", report(&blob, args.json)?);
    Ok(())
}

/// The report of a blob's pools: text, or JSON with `json`.
fn report(blob: &[u8], json: bool) -> Result<String, Error> {
    let dt = parse(blob).map_err(|e| Error::device_tree("", &e))?;
    if json {
        to_json(&dt)
    } else {
        Ok(to_text(&dt))
    }
}

/// `swiotlb dt --json`.
#[derive(Serialize)]
struct DtReport<'a> {
    pools: Vec<PoolReport<'a>>,
}

/// One pool: where it is, its kind, and the devices whose
/// `memory-region` names it.
#[derive(Serialize)]
struct PoolReport<'a> {
    name: &'a str,
    /// The node's full path.
    path: &'a str,
    base: PhysAddr,
    size: u64,
    /// `base + size`.
    end: u64,
    /// `restricted` or `shared`.
    kind: &'static str,
    devices: &'a [String],
}

fn to_json(dt: &DtPools<'_>) -> Result<String, Error> {
    let report = DtReport {
        pools: dt
            .pools
            .iter()
            .map(|p| PoolReport {
                name: p.name,
                path: &p.path,
                base: p.base,
                size: p.size,
                end: p.end(),
                kind: p.kind.name(),
                devices: &p.devices,
            })
            .collect(),
    };
    let mut out = serde_json::to_string(&report)?;
    out.push('\n');
    Ok(out)
}

fn to_text(dt: &DtPools<'_>) -> String {
    let mut out = String::new();
    if dt.pools.is_empty() {
        out.push_str("no restricted-dma-pool or shared-dma-pool under /reserved-memory\n");
        return out;
    }
    for p in &dt.pools {
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "{} ({})\n  range:   {:#x}..{:#x}\n  size:    {} ({} bytes)",
            p.path,
            p.kind,
            p.base.0,
            p.end(),
            human(p.size),
            p.size
        );
        if p.devices.is_empty() {
            out.push_str("  devices: none\n");
        } else {
            let _ = writeln!(out, "  devices: {}", p.devices.join(", "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &[u8] = include_bytes!("../examples/dt/restricted.dtb");

    #[test]
    fn text() {
        let out = report(EXAMPLE, false).unwrap();
        assert!(
            out.contains("/reserved-memory/restricted@50000000 (restricted)"),
            "{out}"
        );
        assert!(out.contains("range:   0x50000000..0x50400000"), "{out}");
        assert!(out.contains("size:    4 MiB (4194304 bytes)"), "{out}");
        assert!(
            out.contains("devices: /soc@0/virtio@a000000, /soc@0/virtio@a000200"),
            "{out}"
        );
        assert!(
            out.contains("/reserved-memory/framebuffer@70000000 (shared)"),
            "{out}"
        );
    }

    #[test]
    fn json() {
        let out = report(EXAMPLE, true).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let pools = v["pools"].as_array().unwrap();
        assert_eq!(pools.len(), 3);
        assert_eq!(pools[0]["name"], "restricted@50000000");
        assert_eq!(pools[0]["base"], 0x5000_0000u64);
        assert_eq!(pools[0]["size"], 0x40_0000u64);
        assert_eq!(pools[0]["kind"], "restricted");
        assert_eq!(
            pools[0]["devices"],
            serde_json::json!(["/soc@0/virtio@a000000", "/soc@0/virtio@a000200"])
        );
        assert_eq!(
            pools[1]["devices"],
            serde_json::json!(["/soc@0/dma-controller@b000000"])
        );
        assert_eq!(pools[2]["kind"], "shared");
        assert_eq!(
            pools[2]["devices"],
            serde_json::json!(["/soc@0/display@c000000"])
        );
    }

    #[test]
    fn bad_blob_is_an_error() {
        let e = report(&EXAMPLE[..100], false).unwrap_err();
        // The core's message names swiotlb: the command does not add it.
        assert!(e.names_swiotlb(), "{e:?}");
        let e = e.to_string();
        assert!(e.starts_with("swiotlb: bad device tree blob"), "{e}");
        let e = report(b"hello, not a device tree", true).unwrap_err();
        assert!(e.to_string().contains("bad magic"), "{e}");
    }
}
