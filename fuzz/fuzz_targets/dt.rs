//! The device-tree reader (`swiotlb::dt::parse`, feature `fdt`).
//!
//! The first byte picks the mode:
//! - even: the rest is a blob, any bytes. Never a panic, the same answer
//!   twice, an error that names swiotlb (a bad blob at an offset inside
//!   it), and pools that hold together: none empty or wrapping, no two
//!   overlapping, each under `/reserved-memory` at its own name, each
//!   device listed once, every lookup finding what it lists;
//! - odd: the rest describes a tree (`swiotlb_fuzz::dt::Spec`: pools of
//!   every kind, a bus with `dma-ranges`, devices naming pools), written
//!   as a valid blob with `vm-fdt`. On top of the above, the reader
//!   returns exactly the pools the description gives, devices and all,
//!   or refuses it with one of the problems the description has.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use swiotlb::dt::{parse, DtError, DtPools};
use swiotlb_fuzz::dt::{Pool, Spec};

/// What any answer must satisfy, and the answer.
fn check_any(blob: &[u8]) -> Result<DtPools<'_>, DtError<'_>> {
    let got = parse(blob);
    assert_eq!(parse(blob), got, "a second parse differs");
    let pools = match &got {
        Ok(p) => p,
        Err(e) => {
            let text = e.to_string();
            assert!(text.starts_with("swiotlb: "), "{text}");
            if let DtError::BadBlob { offset, .. } = e {
                assert!(*offset <= blob.len(), "{e:?} past the blob");
            }
            return got;
        }
    };
    let ps = &pools.pools;
    for (i, p) in ps.iter().enumerate() {
        assert!(p.size > 0, "{p:?}");
        assert!(p.base.0.checked_add(p.size).is_some(), "{p:?} wraps");
        assert_eq!(p.end(), p.base.0 + p.size);
        assert_eq!(
            p.path,
            format!("/reserved-memory/{}", p.name),
            "a pool outside /reserved-memory"
        );
        for q in &ps[i + 1..] {
            assert!(
                p.end() <= q.base.0 || q.end() <= p.base.0,
                "{p:?} overlaps {q:?}"
            );
        }
        for (k, d) in p.devices.iter().enumerate() {
            assert!(d.starts_with('/'), "{d:?}");
            assert!(!p.devices[k + 1..].contains(d), "{d:?} listed twice");
            let owner = pools.pool_of(d).expect("a listed device has a pool");
            assert!(owner.devices.contains(d));
        }
        let named = pools.get(p.name).expect("found by name");
        assert_eq!(named.name, p.name);
        assert_eq!(pools.get(&p.path).map(|q| &q.path), Some(&p.path));
    }
    got
}

fn check_spec(spec: &Spec) {
    let blob = spec.blob();
    let got = check_any(&blob);
    match (got, spec.expect()) {
        (Ok(got), Ok(want)) => {
            let got: Vec<Pool> = got
                .pools
                .into_iter()
                .map(|p| Pool {
                    name: p.name.to_string(),
                    path: p.path,
                    base: p.base.0,
                    size: p.size,
                    kind: p.kind,
                    devices: p.devices,
                })
                .collect();
            assert_eq!(got, want, "{spec:?}");
        }
        (Err(e), Err(problems)) => {
            assert!(
                problems.contains(&e.kind()),
                "{spec:?}: refused with {e:?}, but its problems are {problems:?}"
            );
        }
        (got, want) => panic!("{spec:?}: read {got:?}, expected {want:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let _ = check_any(rest);
        return;
    }
    let mut u = Unstructured::new(rest);
    if let Ok(spec) = Spec::arbitrary(&mut u) {
        check_spec(&spec);
    }
});
