//! `swiotlb explain`: what pool a `swiotlb=` kernel parameter gives.

use std::fmt::Write as _;

use crate::units::human;
use swiotlb::config::{Force, Resolved, SwiotlbParam, IO_TLB_SHIFT};

/// Arguments of `swiotlb explain`.
#[derive(clap::Args)]
pub struct Args {
    /// The value, with or without the `swiotlb=` prefix:
    /// `[<nslabs>][,<nareas>][,force|noforce]`.
    value: String,
    /// Possible CPUs of the machine (Linux uses one area per CPU when no
    /// area count is given). Default: this machine's.
    #[arg(long)]
    cpus: Option<u32>,
    /// Also report, as an error, anything Linux silently ignores or adjusts.
    #[arg(long)]
    strict: bool,
    /// Print JSON: `nslabs`, `nareas`, `bytes`, `force`, `canonical`,
    /// `adjustments`.
    #[arg(long)]
    json: bool,
}

fn force_name(f: Force) -> &'static str {
    match f {
        Force::Default => "default",
        Force::Force => "force",
        Force::NoForce => "noforce",
    }
}

/// Runs `swiotlb explain`.
pub fn run(args: &Args) -> Result<(), String> {
    print!("{}", explain(args)?);
    Ok(())
}

fn explain(args: &Args) -> Result<String, String> {
    let param = SwiotlbParam::parse(&args.value);
    // The strict parser names the first thing Linux would ignore or adjust;
    // in lenient mode it becomes a note rather than an error.
    let adjustment = SwiotlbParam::parse_strict(&args.value).err();
    if args.strict {
        if let Some(e) = adjustment {
            return Err(e.to_string());
        }
    }
    let cpus = args.cpus.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1)
    });
    if cpus == 0 {
        return Err("--cpus must be at least 1".into());
    }
    let r: Resolved = param.resolve(cpus);
    let mut out = String::new();
    if args.json {
        let v = serde_json::json!({
            "nslabs": r.nslabs,
            "nareas": r.nareas,
            "bytes": r.bytes,
            "force": force_name(r.force),
            "slot_size": 1u64 << IO_TLB_SHIFT,
            "cpus": cpus,
            "canonical": param.to_string(),
            "adjustments": adjustment.map(|e| e.to_string()),
        });
        writeln!(out, "{v}").map_err(|e| e.to_string())?;
        return Ok(out);
    }
    let w = |out: &mut String, s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    w(&mut out, format!("swiotlb={}", param));
    w(
        &mut out,
        format!("  pool:   {} ({} bytes)", human(r.bytes), r.bytes),
    );
    w(
        &mut out,
        format!("  slots:  {} of {} bytes", r.nslabs, 1u64 << IO_TLB_SHIFT),
    );
    let area_src = if param.nareas.is_some() {
        "given".to_string()
    } else {
        format!("one per CPU, {cpus} CPUs")
    };
    w(
        &mut out,
        format!(
            "  areas:  {} ({area_src}), {} slots each",
            r.nareas,
            r.nslabs / r.nareas as u64
        ),
    );
    let force = match r.force {
        Force::Default => "bounce only what a device cannot reach",
        Force::Force => "force: every mapping bounces",
        Force::NoForce => "noforce: no bounce pool is set up",
    };
    w(&mut out, format!("  mode:   {force}"));
    if let Some(e) = adjustment {
        w(&mut out, format!("  note:   {e}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(value: &str, json: bool) -> Args {
        Args {
            value: value.into(),
            cpus: Some(4),
            strict: false,
            json,
        }
    }

    #[test]
    fn json_fields() {
        let out = explain(&args("swiotlb=65536,4,force", true)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["nslabs"], 65536);
        assert_eq!(v["nareas"], 4);
        assert_eq!(v["bytes"], 65536u64 << 11);
        assert_eq!(v["force"], "force");
        assert_eq!(v["canonical"], "65536,4,force");
        assert!(v["adjustments"].is_null());
    }

    #[test]
    fn defaults_follow_cpus() {
        let out = explain(&args("force", true)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["nslabs"], 32768);
        assert_eq!(v["nareas"], 4);
        assert_eq!(v["bytes"], 64u64 << 20);
    }

    #[test]
    fn text_and_strict() {
        let out = explain(&args("1000", false)).unwrap();
        assert!(out.contains("slots:  1024"), "{out}");
        assert!(out.contains("note:"), "{out}");
        let strict = Args {
            strict: true,
            ..args("1000", false)
        };
        let e = explain(&strict).unwrap_err();
        assert!(e.contains("swiotlb"), "{e}");
    }
}
