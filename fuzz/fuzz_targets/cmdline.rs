//! A whole kernel command line (`Cmdline`) and a lone `swiotlb.region=`
//! value (`RegionParam`), on any text.
//!
//! Checked, against models written apart from the core
//! (`swiotlb_fuzz::linux`) and the line rules the core documents (words
//! split at ASCII whitespace and `\v`, nothing after a lone `--`, every `swiotlb=`
//! read in turn on top of the ones before as Linux does, the last of our
//! own repeated keys taken):
//! - each key's value is read exactly as the key's own parser reads that
//!   text, the way Linux hands a parameter its value: `swiotlb=` as
//!   `setup_io_tlb_npages()` (once per occurrence, each on what the
//!   earlier ones stored), `swiotlb.high=` strictly, `swiotlb.region=` by
//!   its `memparse()` grammar;
//! - the lenient parse fails exactly when `swiotlb.high=` or the region
//!   is refused, with an offset inside the line;
//! - the strict parse succeeds exactly when no key repeats, nothing is
//!   adjusted or ignored and the keys do not contradict each other, and
//!   then agrees with the lenient one, which has nothing to say;
//! - the region's pool is whole slots, at least a segment, ends by 2^64,
//!   and has a power-of-two area count with a segment per area;
//! - a line written back from what was read (`Display` of `swiotlb=`,
//!   the numbers of the other two) reads the same, strictly when the
//!   original was strict.
//!
//! Lines with a `"` are not held to the models: the core documents that
//! it does not read quoted values, where Linux strips the quotes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use swiotlb::cmdline::{Cmdline, RegionParam, MIN_REGION_SIZE};
use swiotlb::config::SwiotlbParam;
use swiotlb::config::{Force, IO_TLB_SEGSIZE, IO_TLB_SHIFT, IO_TLB_SIZE, MAX_NSLABS};
use swiotlb::error::Error;
use swiotlb_fuzz::linux::{region, setup_io_tlb_npages_onto, strtoul, Linux};

const SEG: u64 = IO_TLB_SEGSIZE as u64;
const SLOT: u64 = IO_TLB_SIZE as u64;

/// Every `swiotlb=` value, the last value of our own keys, and whether
/// any key came twice.
#[derive(Default)]
struct Keys<'a> {
    swiotlb: Vec<&'a str>,
    high: Option<&'a str>,
    region: Option<&'a str>,
    repeated: bool,
}

/// The words of the line as the core documents them.
fn keys(line: &str) -> Keys<'_> {
    let mut k = Keys::default();
    let mut seen = [0u32; 3];
    for word in line
        .split(|c: char| c.is_ascii_whitespace() || c == '\x0b')
        .filter(|w| !w.is_empty())
    {
        if word == "--" {
            break;
        }
        let (i, value) = if let Some(v) = word.strip_prefix("swiotlb=") {
            (0, v)
        } else if let Some(v) = word.strip_prefix("swiotlb.high=") {
            (1, v)
        } else if let Some(v) = word.strip_prefix("swiotlb.region=") {
            (2, v)
        } else if word == "swiotlb.region" {
            (2, "")
        } else {
            continue;
        };
        match i {
            0 => k.swiotlb.push(value),
            1 => k.high = Some(value),
            _ => k.region = Some(value),
        }
        seen[i] += 1;
    }
    k.repeated = seen.iter().any(|&n| n > 1);
    k
}

/// `swiotlb.high=`: a whole non-zero multiple of 128 slots, at most
/// `MAX_NSLABS`.
fn high(value: &str) -> Option<u64> {
    let s = value.as_bytes();
    if !s.first().is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let (v, end, _) = strtoul(s, 0);
    v.filter(|&n| end == s.len() && n != 0 && n % SEG == 0 && n <= MAX_NSLABS)
}

fn check_line(line: &str) {
    let lenient = Cmdline::read(line);
    let strict = Cmdline::parse_strict(line);
    let at_inside = |e: &Error| match *e {
        Error::BadParam { at, .. } | Error::BadRegion { at, .. } | Error::BadCmdline { at, .. } => {
            assert!(at <= line.len(), "{line:?}: {e:?} past the line")
        }
        _ => panic!("{line:?}: {e:?}"),
    };
    if let Err(e) = &lenient {
        at_inside(e);
    }
    if let Err(e) = &strict {
        at_inside(e);
    }
    if let Ok(s) = &strict {
        let r = lenient.as_ref().expect("strict without lenient");
        assert_eq!(r.cmdline, *s, "{line:?}: strict and lenient");
        assert_eq!(
            r.findings().count(),
            0,
            "{line:?}: a strict line with findings"
        );
    }
    assert_eq!(Cmdline::parse(line), lenient.map(|r| r.cmdline), "{line:?}");

    if !line.contains('"') {
        check_model(line, &lenient.map(|r| r.cmdline), strict.is_ok());
    }

    let Ok(c) = Cmdline::parse(line) else { return };
    for cpus in [0, 1, 3, 64, u32::MAX] {
        let Some(p) = c.region_pool(cpus) else {
            assert!(c.region.is_none());
            continue;
        };
        assert_eq!(p.base.as_u64() % SLOT, 0, "{p:?}");
        assert_eq!(p.size % SLOT, 0, "{p:?}");
        assert!(p.size >= MIN_REGION_SIZE, "{p:?}");
        assert!(p.base.as_u64().checked_add(p.size - 1).is_some(), "{p:?}");
        assert_eq!(p.nslabs, p.size >> IO_TLB_SHIFT, "{p:?}");
        assert!(p.nareas.is_power_of_two(), "{p:?}");
        assert!(u64::from(p.nareas) * SEG <= p.nslabs, "{p:?}");
        assert_eq!(p.force, c.force() == Force::Force, "{p:?}");
    }

    // Written back, read the same.
    let mut again = Vec::new();
    if let Some(p) = c.swiotlb {
        // One value, unless the slot count was stored after the area
        // count (then it need not be what one value rounds it to): then
        // the area count first and the rest after it, as the line did.
        if SwiotlbParam::parse(&p.to_string()) == p {
            again.push(format!("swiotlb={p}"));
        } else {
            let rest = SwiotlbParam { nareas: None, ..p };
            again.push(format!("swiotlb=,{}", p.nareas.unwrap_or(1)));
            again.push(format!("swiotlb={rest}"));
        }
    }
    if let Some(h) = c.high {
        again.push(format!("swiotlb.high={h}"));
    }
    if let Some(r) = c.region {
        let force = if r.force { ",force" } else { "" };
        again.push(format!(
            "swiotlb.region={:#x}@{:#x}{force}",
            r.size,
            r.base.as_u64()
        ));
    }
    let again = again.join(" ");
    assert_eq!(
        Cmdline::parse(&again),
        Ok(c),
        "{line:?} written as {again:?}"
    );
    if strict.is_ok() {
        assert_eq!(
            Cmdline::parse_strict(&again),
            Ok(c),
            "{line:?} written as {again:?}"
        );
    }
}

/// The models' answer for the line, against the core's.
fn check_model(line: &str, got: &Result<Cmdline, Error>, strict_ok: bool) {
    let k = keys(line);
    // Each value on what the ones before it stored; the last one's
    // reading is the line's.
    let mut swiotlb: Option<Linux> = None;
    let mut all_clean = true;
    for v in &k.swiotlb {
        let prior = swiotlb.as_ref().map(|l| l.param).unwrap_or_default();
        let l = setup_io_tlb_npages_onto(v, prior);
        all_clean &= l.as_written;
        swiotlb = Some(l);
    }
    let high = k.high.map(high);
    let region = k.region.map(region);
    let want_ok = !matches!(high, Some(None)) && !matches!(region, Some(None));
    match got {
        Ok(c) => {
            assert!(want_ok, "{line:?}: read as {c:?}");
            assert_eq!(
                c.swiotlb,
                swiotlb.as_ref().map(|l| l.param),
                "{line:?}: swiotlb="
            );
            assert_eq!(c.high.map(|h| h.nslabs), high.flatten(), "{line:?}: high");
            assert_eq!(
                c.region.map(|r| (r.base.as_u64(), r.size, r.force)),
                region.flatten().map(|(r, _)| r),
                "{line:?}: region"
            );
        }
        Err(e) => {
            assert!(!want_ok, "{line:?}: refused with {e:?}");
            // `swiotlb.high=` is looked at before the region.
            if matches!(high, Some(None)) {
                assert!(matches!(e, Error::BadParam { .. }), "{line:?}: {e:?}");
            } else {
                assert!(matches!(e, Error::BadRegion { .. }), "{line:?}: {e:?}");
            }
        }
    }
    let clean_swiotlb = all_clean;
    let with_region = region.is_some();
    let contradicts = with_region
        && swiotlb
            .as_ref()
            .is_some_and(|l| l.nslabs.is_some() || l.param.force == Force::NoForce);
    let shrunk = region.flatten().is_some_and(|(_, shrunk)| shrunk);
    let want_strict = want_ok && !k.repeated && clean_swiotlb && !shrunk && !contradicts;
    assert_eq!(strict_ok, want_strict, "{line:?}: strict");
}

fn check_region(text: &str) {
    let value = text.strip_prefix("swiotlb.region=").unwrap_or(text);
    let want = region(value);
    let read = RegionParam::read(text);
    match (&read, want) {
        (Ok(r), Some(((base, size, force), shrunk))) => {
            assert_eq!(
                (r.param.base.as_u64(), r.param.size, r.param.force),
                (base, size, force),
                "{text:?}"
            );
            assert_eq!(r.shrunk, shrunk, "{text:?}");
            assert_eq!(r.param.nslabs(), size >> IO_TLB_SHIFT);
            assert_eq!(
                r.param.end().map(|e| e.as_u64()),
                base.checked_add(size),
                "{text:?}"
            );
        }
        (Err(Error::BadRegion { at, .. }), None) => {
            assert!(*at <= value.len(), "{text:?}: at {at}")
        }
        (got, want) => panic!("{text:?}: read {got:?}, the grammar says {want:?}"),
    }
    assert_eq!(RegionParam::parse(text), read.map(|r| r.param), "{text:?}");
    let strict = RegionParam::parse_strict(text);
    assert_eq!(
        strict.is_ok(),
        want.is_some_and(|(_, shrunk)| !shrunk),
        "{text:?}: strict {strict:?}"
    );
    if let Ok(p) = strict {
        assert_eq!(Ok(p), RegionParam::parse(text), "{text:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check_line(&text);
    check_region(&text);
});
