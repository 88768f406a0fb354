//! Basic end-to-end behaviour of both policies.

mod misuse;

use misuse::expect_misuse;

use swiotlb::{
    Attrs, Device, Direction, DmaMask, Error, Fast, MapOptions, NextFit, PhysAddr, Policy, Pool,
    PoolConfig,
};

fn forced() -> Device {
    Device::new(DmaMask::BITS_64).with_force_bounce()
}

fn round_trip<P: Policy>() {
    let pool = Pool::<P>::new_heap(1 << 20, PoolConfig::with_areas(2)).unwrap();
    let dev = forced();
    let data: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
    let m = pool
        .map(&dev, data.clone(), Direction::Bidirectional)
        .unwrap();
    assert!(m.is_bounced());
    // The device sees the data in the slots.
    let dp = m.device_ptr().as_ptr();
    // SAFETY: test plays the device: the slots hold `m.len()` bytes.
    let seen = unsafe { std::slice::from_raw_parts(dp, m.len()) }.to_vec();
    assert_eq!(seen, data);
    // The device writes; unmap copies back.
    let at = dp.wrapping_add(100);
    // SAFETY: bytes 100..150 of the mapping's 5000 slot bytes; the test
    // plays the device, and nothing else touches them.
    unsafe { std::ptr::write_bytes(at, 0xAB, 50) };
    let back = m.unmap();
    let mut want = data.clone();
    want[100..150].fill(0xAB);
    assert_eq!(back, want);
    assert_eq!(pool.stats().io_tlb_used, 0);
    assert_eq!(pool.stats().io_tlb_used_hiwater, 3);
}

#[test]
fn round_trip_fast() {
    round_trip::<Fast>();
}

#[test]
fn round_trip_nextfit() {
    round_trip::<NextFit>();
}

fn raw_min_align<P: Policy>() {
    let pool = Pool::<P>::new_heap(1 << 20, PoolConfig::default()).unwrap();
    let dev = forced().with_min_align_mask(0xfff);
    let mut buf = vec![1u8; 3000];
    let orig = PhysAddr(0x1234_5a10);
    // SAFETY: `buf` lives until after the unmap and is not touched meanwhile.
    let b = unsafe {
        pool.bounce_raw(
            &dev,
            orig,
            buf.as_mut_ptr(),
            3000,
            Attrs::NONE,
            MapOptions::default(),
        )
    }
    .unwrap();
    assert_eq!(b.phys.0 & 0xfff, 0xa10);
    let dma = dev.phys_to_dma(b.phys);
    // SAFETY: the mapping is live and `buf` is valid and untouched.
    let r = unsafe { pool.sync_for_cpu_raw(&dev, dma + 100, 10, Direction::FromDevice) };
    r.unwrap();
    // SAFETY: as the sync above; a refused range copies nothing.
    let r = expect_misuse(&["SyncOutside"], || unsafe {
        pool.sync_for_cpu_raw(&dev, dma + 2995, 10, Direction::FromDevice)
    });
    let oob = Error::OutOfBounds {
        offset: 2995,
        len: 10,
        mapping_len: 3000,
    };
    assert_eq!(r, Err(oob));
    // SAFETY: the mapping is live, `buf` valid and untouched, the device
    // done.
    let r = unsafe { pool.unmap_raw(&dev, dma, 3000, Direction::FromDevice, Attrs::NONE) };
    r.unwrap();
    // SAFETY: a second unmap finds no mapping and touches nothing.
    let r = expect_misuse(&["NeverMapped"], || unsafe {
        pool.unmap_raw(&dev, dma, 3000, Direction::FromDevice, Attrs::NONE)
    });
    assert_eq!(r, Err(Error::NotMapped { dma }));
    assert_eq!(pool.stats().io_tlb_used, 0);
}

#[test]
fn raw_min_align_fast() {
    raw_min_align::<Fast>();
}

#[test]
fn raw_min_align_nextfit() {
    raw_min_align::<NextFit>();
}

#[test]
fn full_and_too_large() {
    let pool = Pool::<Fast>::new_heap(8 * 2048, PoolConfig::default()).unwrap();
    let dev = forced();
    let big = pool
        .map(&dev, vec![0u8; 8 * 2048], Direction::ToDevice)
        .unwrap();
    let e = pool
        .map(&dev, vec![0u8; 10], Direction::ToDevice)
        .unwrap_err();
    assert_eq!(
        e.error,
        Error::PoolFull {
            requested: 1,
            free: 0,
            largest_run: 0
        }
    );
    drop(big);
    let e = pool
        .map(&dev, vec![0u8; 9 * 2048], Direction::ToDevice)
        .unwrap_err();
    assert!(matches!(e.error, Error::TooLarge { .. }), "{:?}", e.error);
}

/// Without the pool-wide counter (the default) the high-water mark is kept
/// per area: the sum of the areas' marks, never below the true mark, and
/// exact with one area; `with_hiwater(swiotlb::Hiwater::Exact)` keeps Linux's exact
/// pool-wide mark.
fn area_marks<P: Policy>() {
    let dev = forced();
    // Two areas of 256 slots; mappings of 4 slots, placed by area hint.
    let pool = Pool::<P>::new_heap(1 << 20, PoolConfig::with_areas(2))
        .unwrap()
        .with_hiwater(swiotlb::Hiwater::PerArea);
    let exact = Pool::<P>::new_heap(1 << 20, PoolConfig::with_areas(2))
        .unwrap()
        .with_hiwater(swiotlb::Hiwater::Exact);
    let mut bufs: Vec<Vec<u8>> = (0..20).map(|i| vec![i as u8; 8192]).collect();
    let map = |p: &Pool<P>, b: &mut Vec<u8>, area: usize| {
        let cpu = b.as_mut_ptr();
        let opts = MapOptions::default().with_area_hint(area);
        // SAFETY: the buffer outlives the mapping and is not touched while
        // mapped.
        unsafe { p.bounce_raw(&dev, PhysAddr(cpu as u64), cpu, 8192, Attrs::NONE, opts) }.unwrap()
    };
    let unmap = |p: &Pool<P>, d| {
        // SAFETY: as above.
        unsafe { p.unmap_raw(&dev, d, 8192, Direction::ToDevice, Attrs::NONE) }.unwrap()
    };
    for pool in [&pool, &exact] {
        // Area 0 peaks at 10 mappings (40 slots), then empties; area 1
        // then peaks at 10 while area 0 holds none: the true mark is 40.
        let (a, b) = bufs.split_at_mut(10);
        let first: Vec<_> = a.iter_mut().map(|x| map(pool, x, 0).dma).collect();
        first.into_iter().for_each(|d| unmap(pool, d));
        let second: Vec<_> = b.iter_mut().map(|x| map(pool, x, 1).dma).collect();
        assert_eq!(pool.used_slots(), 40);
        second.into_iter().for_each(|d| unmap(pool, d));
        assert_eq!(pool.used_slots(), 0);
    }
    let s = exact.stats();
    assert!(s.hiwater_exact);
    assert_eq!(s.io_tlb_used_hiwater, 40);
    let s = pool.stats();
    assert!(!s.hiwater_exact);
    assert_eq!(s.io_tlb_used_hiwater, 80, "each area's own mark, summed");
    assert_eq!(s.io_tlb_used, 0);
    // Reset: back to what is held now.
    pool.reset_hiwater();
    assert_eq!(pool.stats().io_tlb_used_hiwater, 0);
    // One area: the sum is the mark.
    let one = Pool::<P>::new_heap(1 << 20, PoolConfig::default()).unwrap();
    let held: Vec<_> = bufs[..5].iter_mut().map(|x| map(&one, x, 0).dma).collect();
    held.into_iter().for_each(|d| unmap(&one, d));
    assert_eq!(one.stats().io_tlb_used_hiwater, 20);
    assert!(one.stats().hiwater_exact);
}

#[test]
fn area_marks_fast() {
    area_marks::<Fast>();
}

#[test]
fn area_marks_nextfit() {
    area_marks::<NextFit>();
}

/// The lines of the `[name]` table of a TOML file, up to the next table.
fn toml_table<'a>(toml: &'a str, name: &str) -> Vec<&'a str> {
    let header = format!("[{name}]");
    toml.lines()
        .skip_while(|l| l.trim() != header)
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect()
}

/// Every Cargo feature is listed under `# Features` in the crate docs, and
/// docs.rs documents the crate with all of them.
#[test]
fn every_feature_is_documented_and_built_on_docs_rs() {
    let manifest = include_str!("../Cargo.toml");
    let docs = include_str!("../src/lib.rs");
    let section = docs
        .split("//! # Features")
        .nth(1)
        .and_then(|rest| rest.split("//! # ").next())
        .expect("a `# Features` section in the crate docs");
    let features: Vec<&str> = toml_table(manifest, "features")
        .into_iter()
        .filter_map(|l| l.split_once('=').map(|(name, _)| name.trim()))
        .filter(|&name| name != "default")
        .collect();
    assert!(features.contains(&"fdt"), "{features:?}");
    for f in features {
        assert!(
            section.contains(&format!("//! - `{f}`")),
            "feature `{f}` is missing from the crate docs' `# Features`"
        );
    }
    let docs_rs = toml_table(manifest, "package.metadata.docs.rs");
    assert!(
        docs_rs
            .iter()
            .any(|l| l.replace(' ', "") == "all-features=true"),
        "{docs_rs:?}"
    );
}
