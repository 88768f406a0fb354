//! The `swiotlb=` parser (`SwiotlbParam`) and our `swiotlb.high=`
//! (`HighParam`) on any text.
//!
//! Checked:
//! - the lenient parser agrees with a plain transcription of Linux's
//!   `setup_io_tlb_npages()` written apart from the core
//!   (`swiotlb_fuzz::linux`, with the core's documented saturation where
//!   Linux's arithmetic wraps), number by number;
//! - what it stores is in range: a slot count that is a multiple of 128
//!   and at most `MAX_NSLABS`, an area count that is a power of two from
//!   1 to `MAX_NAREAS`, and with an area count a slot count that is a
//!   power of two holding a segment per area;
//! - `Display` is canonical: its text parses back to the same value, and
//!   strictly so when the value came from the strict parser;
//! - the strict parser accepts exactly the values Linux stores as
//!   written, agrees with the lenient one when it does, and otherwise
//!   reports the first finding, at an offset inside the value;
//! - `resolve` gives a usable geometry for any CPU count;
//! - `HighParam` accepts exactly a whole non-zero multiple of 128 up to
//!   `MAX_NSLABS`, and reads back its own `Display`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use swiotlb::config::{
    HighParam, SwiotlbParam, IO_TLB_SEGSIZE, IO_TLB_SHIFT, MAX_NAREAS, MAX_NSLABS,
};
use swiotlb::error::Error;
use swiotlb_fuzz::linux::{setup_io_tlb_npages, strtoul};

const SEG: u64 = IO_TLB_SEGSIZE as u64;

/// The value's invariants (see the module documentation).
fn check_range(p: &SwiotlbParam, text: &str) {
    if let Some(n) = p.nslabs {
        assert!(n % SEG == 0 && n <= MAX_NSLABS, "{text:?}: nslabs {n}");
    }
    if let Some(a) = p.nareas {
        assert!(
            a.is_power_of_two() && a <= MAX_NAREAS,
            "{text:?}: nareas {a}"
        );
        let n = p.nslabs_or_default();
        assert!(n.is_power_of_two(), "{text:?}: {n} slots with areas");
        assert!(n >= u64::from(a) * SEG, "{text:?}: {n} slots for {a} areas");
    }
}

fn check_param(text: &str) {
    let lenient = SwiotlbParam::parse(text);
    let reading = SwiotlbParam::read(text);
    assert_eq!(reading.param, lenient, "{text:?}: read and parse");

    let want = setup_io_tlb_npages(text.strip_prefix("swiotlb=").unwrap_or(text));
    assert_eq!(lenient, want.param, "{text:?}: Linux stores otherwise");
    let number = |n: Option<swiotlb::config::ParamNumber>| {
        n.map(|n| ((!n.overflow).then_some(n.value), n.radix))
    };
    assert_eq!(number(reading.nslabs), want.nslabs, "{text:?}: slot count");
    assert_eq!(number(reading.nareas), want.nareas, "{text:?}: area count");
    check_range(&lenient, text);

    // The findings point inside the value.
    let value = text.strip_prefix("swiotlb=").unwrap_or(text);
    for f in reading.findings() {
        let (at, _) = f.problem();
        assert!(at <= value.len(), "{text:?}: {f:?} past the end");
        if let swiotlb::config::Finding::Ignored { at, len } = *f {
            assert!(len > 0 && at + len <= value.len(), "{text:?}: {f:?}");
        }
    }

    // Canonical text.
    let shown = lenient.to_string();
    assert_eq!(
        SwiotlbParam::parse(&shown),
        lenient,
        "{text:?} shown as {shown:?}"
    );

    match SwiotlbParam::parse_strict(text) {
        Ok(strict) => {
            assert!(
                want.as_written,
                "{text:?}: strict accepts what Linux adjusts"
            );
            assert_eq!(strict, lenient, "{text:?}: strict and lenient");
            assert_eq!(reading.findings().count(), 0, "{text:?}");
            assert_eq!(SwiotlbParam::parse_strict(&shown), Ok(strict), "{shown:?}");
            assert_eq!(shown.parse::<SwiotlbParam>(), Ok(strict), "{shown:?}");
        }
        Err(Error::BadParam { at, problem }) => {
            assert!(!want.as_written, "{text:?}: strict refuses a clean value");
            let first = reading.findings().next().map(|f| f.problem());
            assert_eq!(first, Some((at, problem)), "{text:?}: the first finding");
            assert!(at <= value.len(), "{text:?}: at {at}");
        }
        Err(e) => panic!("{text:?}: strict gave {e:?}"),
    }

    for cpus in [0, 1, 3, 64, 1000, u32::MAX] {
        let r = lenient.resolve(cpus);
        assert!(
            r.nareas.is_power_of_two() && r.nareas <= MAX_NAREAS,
            "{r:?}"
        );
        assert_eq!(r.nslabs % SEG, 0, "{r:?}");
        assert!(r.nslabs >= u64::from(r.nareas) * SEG, "{r:?}");
        assert!(r.nslabs <= MAX_NSLABS, "{r:?}");
        assert_eq!(r.bytes >> IO_TLB_SHIFT, r.nslabs, "{r:?}");
        assert_eq!(r.force, lenient.force);
        // A parsed area count is final: it wins over the CPUs and its
        // slot count already holds a segment per area.
        if let Some(a) = lenient.nareas {
            assert_eq!(
                (r.nslabs, r.nareas),
                (lenient.nslabs_or_default(), a),
                "{text:?}"
            );
        }
    }
}

fn check_high(text: &str) {
    let value = text.strip_prefix("swiotlb.high=").unwrap_or(text);
    let s = value.as_bytes();
    let whole = s.first().is_some_and(u8::is_ascii_digit) && {
        let (_, end, _) = strtoul(s, 0);
        end == s.len()
    };
    let want = whole
        .then(|| strtoul(s, 0).0)
        .flatten()
        .filter(|&n| n != 0 && n % SEG == 0 && n <= MAX_NSLABS);
    match HighParam::parse_strict(text) {
        Ok(h) => {
            assert_eq!(Some(h.nslabs), want, "{text:?}");
            assert_eq!(h.bytes(), h.nslabs << IO_TLB_SHIFT);
            assert_eq!(HighParam::parse_strict(&h.to_string()), Ok(h), "{h}");
        }
        Err(Error::BadParam { at, .. }) => {
            assert_eq!(want, None, "{text:?}: refused");
            assert!(at <= value.len(), "{text:?}: at {at}");
        }
        Err(e) => panic!("{text:?}: {e:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check_param(&text);
    check_high(&text);
});
