//! Device tree pools: blobs built here with `vm-fdt`, one test per rule and
//! per error, and a no-panic sweep over damaged blobs.
#![cfg(feature = "fdt")]

use proptest::prelude::*;
use swiotlb::dt::{parse, BlobProblem, DtError, DtPoolKind};
use swiotlb::PhysAddr;
use vm_fdt::FdtWriter;

/// A `/reserved-memory` child.
struct PoolSpec {
    name: &'static str,
    compatible: &'static str,
    /// `reg` cells, already split by the reserved-memory cell counts.
    reg: Vec<u32>,
    phandle: u32,
    /// Empty properties (`no-map`, `reusable`, ...).
    flags: Vec<&'static str>,
    status: Option<&'static str>,
}

fn pool(name: &'static str, compatible: &'static str, reg: &[u32], phandle: u32) -> PoolSpec {
    PoolSpec {
        name,
        compatible,
        reg: reg.to_vec(),
        phandle,
        flags: Vec::new(),
        status: None,
    }
}

/// A device under `/soc` (one address cell, one size cell).
struct DevSpec {
    name: &'static str,
    regions: Vec<u32>,
    dma_bits: Option<u32>,
    status: Option<&'static str>,
}

fn dev(name: &'static str, regions: &[u32]) -> DevSpec {
    DevSpec {
        name,
        regions: regions.to_vec(),
        dma_bits: None,
        status: None,
    }
}

struct Tree {
    /// `/reserved-memory` `#address-cells` and `#size-cells`.
    cells: (u32, u32),
    pools: Vec<PoolSpec>,
    devices: Vec<DevSpec>,
    /// `/soc` `dma-ranges` (child 1 cell, parent 2 cells, size 1 cell).
    dma_ranges: Option<Vec<u32>>,
}

impl Tree {
    fn new(cells: (u32, u32)) -> Self {
        Tree {
            cells,
            pools: Vec::new(),
            devices: Vec::new(),
            dma_ranges: None,
        }
    }

    fn pool(mut self, p: PoolSpec) -> Self {
        self.pools.push(p);
        self
    }

    fn dev(mut self, d: DevSpec) -> Self {
        self.devices.push(d);
        self
    }

    fn blob(&self) -> Vec<u8> {
        let mut w = FdtWriter::new().unwrap();
        let root = w.begin_node("").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        w.property_string("compatible", "swiotlb,test").unwrap();

        let rmem = w.begin_node("reserved-memory").unwrap();
        w.property_u32("#address-cells", self.cells.0).unwrap();
        w.property_u32("#size-cells", self.cells.1).unwrap();
        w.property_null("ranges").unwrap();
        for p in &self.pools {
            let n = w.begin_node(p.name).unwrap();
            w.property_string("compatible", p.compatible).unwrap();
            w.property_array_u32("reg", &p.reg).unwrap();
            for f in &p.flags {
                w.property_null(f).unwrap();
            }
            if let Some(s) = p.status {
                w.property_string("status", s).unwrap();
            }
            w.property_phandle(p.phandle).unwrap();
            w.end_node(n).unwrap();
        }
        w.end_node(rmem).unwrap();

        let soc = w.begin_node("soc").unwrap();
        w.property_string("compatible", "simple-bus").unwrap();
        w.property_u32("#address-cells", 1).unwrap();
        w.property_u32("#size-cells", 1).unwrap();
        if let Some(r) = &self.dma_ranges {
            w.property_array_u32("dma-ranges", r).unwrap();
        }
        for d in &self.devices {
            let n = w.begin_node(d.name).unwrap();
            w.property_string("compatible", "virtio,mmio").unwrap();
            w.property_array_u32("memory-region", &d.regions).unwrap();
            if let Some(b) = d.dma_bits {
                w.property_u32("swiotlb,dma-bits", b).unwrap();
            }
            if let Some(s) = d.status {
                w.property_string("status", s).unwrap();
            }
            w.end_node(n).unwrap();
        }
        w.end_node(soc).unwrap();
        w.end_node(root).unwrap();
        w.finish().unwrap()
    }
}

/// One 4 MiB restricted pool at 0x5000_0000 (two address and two size
/// cells) shared by two devices.
fn two_devices() -> Vec<u8> {
    Tree::new((2, 2))
        .pool(pool(
            "restricted@50000000",
            "restricted-dma-pool",
            &[0, 0x5000_0000, 0, 0x40_0000],
            1,
        ))
        .dev(dev("virtio@a000000", &[1]))
        .dev(dev("virtio@a000200", &[1]))
        .blob()
}

#[test]
fn one_pool_shared_by_two_devices() {
    let blob = two_devices();
    let dt = parse(&blob).unwrap();
    assert_eq!(dt.pools.len(), 1);
    let p = &dt.pools[0];
    assert_eq!(p.name, "restricted@50000000");
    assert_eq!(p.path, "/reserved-memory/restricted@50000000");
    assert_eq!(p.base, PhysAddr(0x5000_0000));
    assert_eq!(p.size, 0x40_0000);
    assert_eq!(p.end(), 0x5040_0000);
    assert_eq!(p.kind, DtPoolKind::Restricted);
    assert_eq!(p.devices, ["/soc/virtio@a000000", "/soc/virtio@a000200"]);
    assert_eq!(dt.pool_of("/soc/virtio@a000200").unwrap().name, p.name);
    assert!(dt.get("/reserved-memory/restricted@50000000").is_some());
}

#[test]
fn one_address_and_size_cell() {
    let blob = Tree::new((1, 1))
        .pool(pool(
            "restricted@60000000",
            "restricted-dma-pool",
            &[0x6000_0000, 0x10_0000],
            7,
        ))
        .dev(dev("dma@b000000", &[7]))
        .blob();
    let dt = parse(&blob).unwrap();
    assert_eq!(dt.pools[0].base, PhysAddr(0x6000_0000));
    assert_eq!(dt.pools[0].size, 0x10_0000);
    assert_eq!(dt.pools[0].devices, ["/soc/dma@b000000"]);
}

#[test]
fn two_cells_above_4g() {
    let blob = Tree::new((2, 2))
        .pool(pool(
            "restricted@880000000",
            "restricted-dma-pool",
            &[0x8, 0x8000_0000, 0x1, 0],
            3,
        ))
        .blob();
    let dt = parse(&blob).unwrap();
    assert_eq!(dt.pools[0].base, PhysAddr(0x8_8000_0000));
    assert_eq!(dt.pools[0].size, 1 << 32);
    assert!(dt.pools[0].devices.is_empty());
}

#[test]
fn shared_dma_pool_is_recognised() {
    let mut coherent = pool(
        "framebuffer@70000000",
        "shared-dma-pool",
        &[0x7000_0000, 0x80_0000],
        2,
    );
    // no-map is what the coherent binding wants: only restricted pools
    // refuse it.
    coherent.flags.push("no-map");
    let mut global = pool(
        "coherent@78000000",
        "shared-dma-pool",
        &[0x7800_0000, 0x10_0000],
        4,
    );
    global.flags.push("linux,dma-default");
    let blob = Tree::new((1, 1))
        .pool(coherent)
        .pool(global)
        .pool(pool(
            "ramoops@7f000000",
            "ramoops",
            &[0x7f00_0000, 0x1000],
            5,
        ))
        .dev(dev("display@c000000", &[2]))
        .blob();
    let dt = parse(&blob).unwrap();
    assert_eq!(dt.pools.len(), 2, "ramoops is not a DMA pool");
    assert_eq!(dt.pools[0].kind, DtPoolKind::Shared);
    assert_eq!(dt.pools[0].kind.name(), "shared");
    assert_eq!(dt.pools[0].devices, ["/soc/display@c000000"]);
    assert_eq!(dt.pools[1].kind, DtPoolKind::Default);
}

#[test]
fn disabled_nodes_are_skipped() {
    let mut off = pool(
        "restricted@50000000",
        "restricted-dma-pool",
        &[0x5000_0000, 0x1000],
        1,
    );
    off.status = Some("disabled");
    let mut d = dev("virtio@a000000", &[9]);
    // A disabled device's dangling phandle is never followed.
    d.status = Some("disabled");
    let blob = Tree::new((1, 1)).pool(off).dev(d).blob();
    assert!(parse(&blob).unwrap().pools.is_empty());
}

#[test]
fn overlapping_pools() {
    let blob = Tree::new((1, 1))
        .pool(pool(
            "a@50000000",
            "restricted-dma-pool",
            &[0x5000_0000, 0x2000],
            1,
        ))
        .pool(pool(
            "b@50001000",
            "shared-dma-pool",
            &[0x5000_1000, 0x2000],
            2,
        ))
        .blob();
    let e = parse(&blob).unwrap_err();
    assert_eq!(
        e,
        DtError::Overlap {
            a: "a@50000000",
            b: "b@50001000"
        }
    );
    let msg = e.to_string();
    assert!(
        msg.starts_with("swiotlb:") && msg.contains("b@50001000"),
        "{msg}"
    );

    // Touching is not overlapping.
    let blob = Tree::new((1, 1))
        .pool(pool(
            "a@50000000",
            "restricted-dma-pool",
            &[0x5000_0000, 0x1000],
            1,
        ))
        .pool(pool(
            "b@50001000",
            "restricted-dma-pool",
            &[0x5000_1000, 0x1000],
            2,
        ))
        .blob();
    assert_eq!(parse(&blob).unwrap().pools.len(), 2);
}

#[test]
fn zero_size() {
    let blob = Tree::new((2, 2))
        .pool(pool(
            "empty@0",
            "restricted-dma-pool",
            &[0, 0x5000_0000, 0, 0],
            1,
        ))
        .blob();
    let e = parse(&blob).unwrap_err();
    assert_eq!(e, DtError::ZeroSize { node: "empty@0" });
    assert!(e.to_string().contains("empty@0"));
}

#[test]
fn restricted_pool_rejects_what_linux_rejects() {
    for flag in [
        "reusable",
        "no-map",
        "linux,cma-default",
        "linux,dma-default",
    ] {
        let mut p = pool(
            "r@50000000",
            "restricted-dma-pool",
            &[0x5000_0000, 0x1000],
            1,
        );
        p.flags.push(flag);
        let blob = Tree::new((1, 1)).pool(p).blob();
        let e = parse(&blob).unwrap_err();
        assert_eq!(
            e,
            DtError::Unsupported {
                node: "r@50000000",
                property: flag
            }
        );
        let msg = e.to_string();
        assert!(msg.contains("r@50000000") && msg.contains(flag), "{msg}");
    }
}

#[test]
fn dangling_phandle() {
    let blob = Tree::new((1, 1))
        .pool(pool(
            "r@50000000",
            "restricted-dma-pool",
            &[0x5000_0000, 0x1000],
            1,
        ))
        .dev(dev("virtio@a000000", &[0x42]))
        .blob();
    let e = parse(&blob).unwrap_err();
    assert_eq!(
        e,
        DtError::DanglingPhandle {
            device: "virtio@a000000",
            phandle: 0x42
        }
    );
    assert!(e.to_string().contains("virtio@a000000"));
}

#[test]
fn unreachable_by_dma_bits() {
    let mut d = dev("dma@b000000", &[1]);
    d.dma_bits = Some(32);
    let high = Tree::new((2, 2))
        .pool(pool(
            "restricted@100000000",
            "restricted-dma-pool",
            &[1, 0, 0, 0x10_0000],
            1,
        ))
        .dev(d)
        .blob();
    let e = parse(&high).unwrap_err();
    assert_eq!(
        e,
        DtError::Unreachable {
            device: "dma@b000000",
            pool: "restricted@100000000"
        }
    );
    let msg = e.to_string();
    assert!(msg.contains("dma@b000000") && msg.contains("restricted@100000000"));

    // The same device reaches a pool whose last byte is the last of 4 GiB.
    let mut d = dev("dma@b000000", &[1]);
    d.dma_bits = Some(32);
    let low = Tree::new((2, 2))
        .pool(pool(
            "restricted@fff00000",
            "restricted-dma-pool",
            &[0, 0xfff0_0000, 0, 0x10_0000],
            1,
        ))
        .dev(d)
        .blob();
    assert!(parse(&low).is_ok());
}

#[test]
fn unreachable_through_dma_ranges() {
    // Bus address 0 is physical 0x4000_0000; the window is 1 GiB.
    let window = vec![0, 0, 0x4000_0000, 0x4000_0000];
    let tree = |base: u32, bits: Option<u32>| {
        let mut d = dev("virtio@a000000", &[1]);
        d.dma_bits = bits;
        let mut t = Tree::new((1, 1))
            .pool(pool("r", "restricted-dma-pool", &[base, 0x10_0000], 1))
            .dev(d);
        t.dma_ranges = Some(window.clone());
        t.blob()
    };
    assert!(parse(&tree(0x5000_0000, None)).is_ok());
    // Below the window and straddling its end.
    for base in [0x1000_0000, 0x7ff8_0000] {
        assert_eq!(
            parse(&tree(base, None)).unwrap_err(),
            DtError::Unreachable {
                device: "virtio@a000000",
                pool: "r"
            }
        );
    }
    // Translation first, then the mask: physical 0x7000_0000 is bus
    // 0x3000_0000, inside 30 bits.
    assert!(parse(&tree(0x7000_0000, Some(30))).is_ok());
    assert!(parse(&tree(0x7000_0000, Some(29))).is_err());
}

#[test]
fn bad_reg_and_properties() {
    let blob = Tree::new((2, 2))
        .pool(pool("short", "restricted-dma-pool", &[0, 0x5000_0000], 1))
        .blob();
    assert_eq!(parse(&blob).unwrap_err(), DtError::BadReg { node: "short" });

    let blob = Tree::new((2, 2))
        .pool(pool(
            "wraps",
            "restricted-dma-pool",
            &[0xffff_ffff, 0xffff_f000, 0, 0x2000],
            1,
        ))
        .blob();
    assert_eq!(parse(&blob).unwrap_err(), DtError::BadReg { node: "wraps" });

    let blob = Tree::new((1, 1))
        .pool(pool("r", "restricted-dma-pool", &[0x5000_0000, 0x1000], 1))
        .dev(dev("virtio@a000000", &[]))
        .blob();
    assert_eq!(
        parse(&blob).unwrap_err(),
        DtError::BadProperty {
            node: "virtio@a000000",
            property: "memory-region"
        }
    );

    let mut d = dev("virtio@a000000", &[1]);
    d.dma_bits = Some(0);
    let blob = Tree::new((1, 1))
        .pool(pool("r", "restricted-dma-pool", &[0x5000_0000, 0x1000], 1))
        .dev(d)
        .blob();
    assert_eq!(parse(&blob).unwrap_err().kind(), "bad_property");
}

#[test]
fn garbage_and_truncated_blobs() {
    assert!(matches!(
        parse(b""),
        Err(DtError::BadBlob {
            problem: BlobProblem::Truncated,
            ..
        })
    ));
    assert!(matches!(
        parse(&[0x55; 64]),
        Err(DtError::BadBlob {
            problem: BlobProblem::BadMagic,
            ..
        })
    ));
    let blob = two_devices();
    for len in 0..blob.len() {
        let e = parse(&blob[..len]).unwrap_err();
        assert_eq!(e.kind(), "bad_blob", "truncated to {len}: {e}");
        assert!(e.to_string().starts_with("swiotlb: bad device tree blob"));
    }
}

/// Every single-byte change of a valid blob, with values that hit token
/// numbers, lengths and offsets: an answer either way, never a panic.
#[test]
fn damaged_blobs_never_panic() {
    let blob = two_devices();
    for i in 0..blob.len() {
        for v in [0u8, 1, 2, 3, 4, 5, 0x7f, 0x80, 0xff, blob[i] ^ 1] {
            let mut b = blob.clone();
            b[i] = v;
            let _ = parse(&b);
        }
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse(&bytes);
    }

    #[test]
    fn random_damage_never_panics(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut b = two_devices();
        for (at, v) in edits {
            let n = b.len();
            b[at % n] = v;
        }
        let n = b.len();
        b.truncate(n - cut % 64);
        let _ = parse(&b);
    }
}

/// The example shipped with the command line tool.
#[test]
fn checked_in_example() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../swiotlb-cli/examples/dt/restricted.dtb"
    );
    let blob = std::fs::read(path).unwrap();
    let dt = parse(&blob).unwrap();
    let kinds: Vec<_> = dt.pools.iter().map(|p| (p.name, p.kind)).collect();
    assert_eq!(
        kinds,
        [
            ("restricted@50000000", DtPoolKind::Restricted),
            ("restricted@60000000", DtPoolKind::Restricted),
            ("framebuffer@70000000", DtPoolKind::Shared),
        ]
    );
    assert_eq!(
        dt.pools[0].devices,
        ["/soc@0/virtio@a000000", "/soc@0/virtio@a000200"]
    );
}

// Large blobs: the reader must stay n log n, and its answers must not
// change with the size. No timing is asserted here (`swiotlb bench --only
// dt` measures); what is checked is every binding and every error.

/// A pool of a large blob: restricted, two address and two size cells.
struct BigPool {
    name: String,
    base: u64,
    size: u64,
    phandle: u32,
}

/// A device of a large blob, under `/soc`.
struct BigDev {
    name: String,
    regions: Vec<u32>,
    dma_bits: Option<u32>,
    /// A `phandle` of the device's own, which may repeat a pool's.
    phandle: Option<u32>,
}

/// Pools of 1 MiB side by side from 4 GiB up, phandle `i + 1`.
fn big_pools(n: usize) -> Vec<BigPool> {
    (0..n)
        .map(|i| {
            let base = (1u64 << 32) + ((i as u64) << 20);
            BigPool {
                name: format!("restricted@{base:x}"),
                base,
                size: 1 << 20,
                phandle: i as u32 + 1,
            }
        })
        .collect()
}

/// `n` devices, device `i` naming the pools `regions(i)` returns.
fn big_devs(n: usize, regions: impl Fn(usize) -> Vec<u32>) -> Vec<BigDev> {
    (0..n)
        .map(|i| BigDev {
            name: format!("virtio@{:x}", 0x1000_0000 + i * 0x200),
            regions: regions(i),
            dma_bits: None,
            phandle: None,
        })
        .collect()
}

fn big_blob(pools: &[BigPool], devs: &[BigDev]) -> Vec<u8> {
    big_blob_with(pools, devs, None)
}

/// [`big_blob`] with a `/soc` `dma-ranges` (one child cell, two parent
/// cells, one size cell).
fn big_blob_with(pools: &[BigPool], devs: &[BigDev], dma_ranges: Option<&[u32]>) -> Vec<u8> {
    let mut w = FdtWriter::new().unwrap();
    let root = w.begin_node("").unwrap();
    w.property_u32("#address-cells", 2).unwrap();
    w.property_u32("#size-cells", 2).unwrap();
    let rmem = w.begin_node("reserved-memory").unwrap();
    w.property_u32("#address-cells", 2).unwrap();
    w.property_u32("#size-cells", 2).unwrap();
    w.property_null("ranges").unwrap();
    for p in pools {
        let n = w.begin_node(&p.name).unwrap();
        w.property_string("compatible", "restricted-dma-pool")
            .unwrap();
        w.property_array_u64("reg", &[p.base, p.size]).unwrap();
        // Not `property_phandle`, which refuses a repeated value: the
        // tests repeat some on purpose.
        w.property_u32("phandle", p.phandle).unwrap();
        w.end_node(n).unwrap();
    }
    w.end_node(rmem).unwrap();
    let soc = w.begin_node("soc").unwrap();
    w.property_u32("#address-cells", 1).unwrap();
    w.property_u32("#size-cells", 1).unwrap();
    if let Some(r) = dma_ranges {
        w.property_array_u32("dma-ranges", r).unwrap();
    }
    for d in devs {
        let n = w.begin_node(&d.name).unwrap();
        w.property_array_u32("memory-region", &d.regions).unwrap();
        if let Some(b) = d.dma_bits {
            w.property_u32("swiotlb,dma-bits", b).unwrap();
        }
        if let Some(p) = d.phandle {
            w.property_u32("phandle", p).unwrap();
        }
        w.end_node(n).unwrap();
    }
    w.end_node(soc).unwrap();
    w.end_node(root).unwrap();
    w.finish().unwrap()
}

fn dev_path(d: &BigDev) -> String {
    format!("/soc/{}", d.name)
}

#[test]
fn forty_thousand_devices_share_one_pool() {
    let pools = big_pools(1);
    let mut devs = big_devs(40_000, |_| vec![1]);
    // The last device names its pool twice: it is listed once.
    devs.last_mut().unwrap().regions = vec![1, 1];
    let blob = big_blob(&pools, &devs);
    assert!(blob.len() > 1 << 20, "{} bytes", blob.len());
    let dt = parse(&blob).unwrap();
    assert_eq!(dt.pools.len(), 1);
    let p = &dt.pools[0];
    assert_eq!(p.name, pools[0].name);
    assert_eq!(p.base, PhysAddr(pools[0].base));
    assert_eq!(p.devices.len(), 40_000);
    let want: Vec<String> = devs.iter().map(dev_path).collect();
    assert_eq!(p.devices, want, "every device, once, in tree order");
}

#[test]
fn thirty_two_thousand_pools_each_bound_to_its_device() {
    const N: usize = 32_000;
    let pools = big_pools(N);
    // Device i names pool (i * 7919) mod N, a permutation, so binding in
    // tree order would not happen to give the right answer; every tenth
    // device also names the pool after it.
    let pick = |i: usize| (i * 7919) % N;
    let devs = big_devs(N, |i| {
        let mut r = vec![pick(i) as u32 + 1];
        if i % 10 == 0 {
            r.push(((pick(i) + 1) % N) as u32 + 1);
        }
        r
    });
    let blob = big_blob(&pools, &devs);
    let dt = parse(&blob).unwrap();
    assert_eq!(dt.pools.len(), N);
    let mut want: Vec<Vec<String>> = vec![Vec::new(); N];
    for (i, d) in devs.iter().enumerate() {
        want[pick(i)].push(dev_path(d));
        if i % 10 == 0 {
            want[(pick(i) + 1) % N].push(dev_path(d));
        }
    }
    for (k, (got, p)) in dt.pools.iter().zip(&pools).enumerate() {
        assert_eq!(got.name, p.name, "pool {k} in tree order");
        assert_eq!(got.base, PhysAddr(p.base), "pool {k}");
        assert_eq!(got.size, p.size, "pool {k}");
        assert_eq!(got.devices, want[k], "devices of pool {k}");
    }
    let bound: usize = dt.pools.iter().map(|p| p.devices.len()).sum();
    assert_eq!(bound, N + N / 10);
}

/// An overlap placed anywhere among 32,000 pools is found, and named as
/// before: the first pool in tree order that overlaps another, then the
/// first pool after it that it overlaps.
#[test]
fn overlap_among_thirty_two_thousand_pools() {
    const N: usize = 32_000;
    // The two pools the error names.
    let overlap = |edit: &dyn Fn(&mut Vec<BigPool>)| {
        let mut pools = big_pools(N);
        edit(&mut pools);
        let blob = big_blob(&pools, &[]);
        match parse(&blob) {
            Err(DtError::Overlap { a, b }) => (a.to_string(), b.to_string()),
            other => panic!("not an overlap: {other:?}"),
        }
    };
    let pools = big_pools(N);
    let named = |a: usize, b: usize| (pools[a].name.clone(), pools[b].name.clone());

    // The last pool reaches one byte into the one before it.
    let e = overlap(&|p| {
        p[N - 1].base -= 1;
        p[N - 1].name = "late@last".into();
    });
    let mut want = named(N - 2, N - 1);
    want.1 = "late@last".into();
    assert_eq!(e, want);

    // The last pool lies inside the first: far apart in tree order and
    // in address order.
    let e = overlap(&|p| p[N - 1].base = p[0].base + 0x1000);
    assert_eq!(e, named(0, N - 1));

    // The last pool starts below the first and runs into it: the pool
    // first in tree order is the one higher in memory.
    let e = overlap(&|p| p[N - 1].base = p[0].base - 0x1000);
    assert_eq!(e, named(0, N - 1));
    let e = overlap(&|p| {
        p[N - 1].base = p[N - 3].base + 0x1000;
        p[N - 2].base = p[N - 3].base - 0x800;
    });
    assert_eq!(e, named(N - 4, N - 2));

    // Several overlaps: the first pool in tree order that overlaps any
    // (pool 100, at the address of the last) is named with its partner,
    // before pairs whose second pool comes earlier (200 and 201) or that
    // are adjacent in address order.
    let e = overlap(&|p| {
        p[N - 1].base = p[100].base;
        p[N - 2].base = p[5000].base + 0x8_0000;
        p[N - 3].base = p[N - 4].base + 0x10;
        p[200].size = 3 << 20; // overlaps pools 201 and 202
    });
    assert_eq!(e, named(100, N - 1));

    // A pool that covers many: its first partner in tree order is named.
    let e = overlap(&|p| {
        p[N - 10].size = 4 << 20;
        p[N - 1].base = p[N - 9].base + 0x10;
    });
    assert_eq!(e, named(N - 10, N - 9));

    // Two pools at the same address, at the far end.
    let e = overlap(&|p| p[N - 1].base = p[N - 2].base);
    assert_eq!(e, named(N - 2, N - 1));

    // Touching pools never overlap, however many.
    assert_eq!(parse(&big_blob(&pools, &[])).unwrap().pools.len(), N);
}

/// Errors of the binding pass at the far end of a large blob, as in a
/// small one.
#[test]
fn binding_errors_at_the_far_end() {
    const N: usize = 32_000;
    let pools = big_pools(N);
    let devs = || big_devs(N, |i| vec![i as u32 + 1]);

    let mut d = devs();
    d[N - 1].regions = vec![N as u32, 0xdead_beef];
    let blob = big_blob(&pools, &d);
    assert_eq!(
        parse(&blob).err(),
        Some(DtError::DanglingPhandle {
            device: &d[N - 1].name,
            phandle: 0xdead_beef
        })
    );

    let mut d = devs();
    d[N - 1].dma_bits = Some(32);
    let blob = big_blob(&pools, &d);
    assert_eq!(
        parse(&blob).err(),
        Some(DtError::Unreachable {
            device: &d[N - 1].name,
            pool: &pools[N - 1].name
        })
    );
}

/// A phandle given twice is the first node's, in tree order, as Linux's
/// `of_find_node_by_phandle` finds it: the last device repeating pool 1's
/// phandle changes nothing, and a device naming it still gets pool 1.
#[test]
fn repeated_phandle_is_the_first_nodes() {
    const N: usize = 32_000;
    let pools = big_pools(N);
    let mut d = big_devs(N, |i| vec![i as u32 + 1]);
    d[N - 1].phandle = Some(1);
    d[N - 2].regions = vec![1];
    let blob = big_blob(&pools, &d);
    let dt = parse(&blob).unwrap();
    assert_eq!(dt.pools[0].devices, [dev_path(&d[0]), dev_path(&d[N - 2])]);
    assert!(dt.pools[N - 2].devices.is_empty());
}

/// A bus with thousands of `dma-ranges` windows: each pool is translated
/// by the first window, in property order, that holds it whole.
#[test]
fn thousands_of_dma_ranges_windows() {
    const N: usize = 4_000;
    let pools = big_pools(N);
    // Windows for the first half of the pools, each to bus address
    // i MiB (inside 32 bits), listed last pool first; then one window
    // over every pool whose bus addresses all end above 4 GiB.
    let mut ranges = Vec::new();
    for i in (0..N / 2).rev() {
        let p = &pools[i];
        ranges.extend([
            (i as u32) << 20,
            (p.base >> 32) as u32,
            p.base as u32,
            1 << 20,
        ]);
    }
    ranges.extend([0, 0, 0, 0]); // zero length: no window
    ranges.extend([0xfff0_1000, 1, 0, (N as u32) << 20]);
    let devs = |bits: Option<u32>| {
        let mut d = big_devs(N, |i| vec![i as u32 + 1]);
        for x in &mut d[..N / 2] {
            x.dma_bits = Some(32);
        }
        d[N - 1].dma_bits = bits;
        d
    };

    // A 32-bit device reaches a pool of the first half only through its
    // own window, which comes after later pools' windows and before the
    // one over everything: every binding holds.
    let d = devs(None);
    let blob = big_blob_with(&pools, &d, Some(&ranges));
    let dt = parse(&blob).unwrap();
    for (i, p) in dt.pools.iter().enumerate() {
        assert_eq!(p.devices, [dev_path(&d[i])], "pool {i}");
    }

    // The last pool has only the window over everything, which puts it
    // out of a 32-bit device's reach.
    let d = devs(Some(32));
    let blob = big_blob_with(&pools, &d, Some(&ranges));
    assert_eq!(
        parse(&blob).err(),
        Some(DtError::Unreachable {
            device: &d[N - 1].name,
            pool: &pools[N - 1].name
        })
    );

    // A pool that no window holds whole: the last one, straddling the end
    // of the window over everything.
    let mut ranges_short = ranges.clone();
    let n = ranges_short.len();
    ranges_short[n - 1] = ((N as u32) << 20) - 0x1000;
    let d = devs(None);
    let blob = big_blob_with(&pools, &d, Some(&ranges_short));
    assert_eq!(
        parse(&blob).err(),
        Some(DtError::Unreachable {
            device: &d[N - 1].name,
            pool: &pools[N - 1].name
        })
    );
}

/// Two nodes with one path (siblings of one name, which dtc refuses but
/// a blob may hold) are one entry in a pool's device list.
#[test]
fn one_path_is_listed_once() {
    let pools = big_pools(2);
    let mut d = big_devs(5, |i| vec![1 + (i % 2) as u32]);
    d[2].name = d[0].name.clone();
    d[4].name = d[0].name.clone();
    let blob = big_blob(&pools, &d);
    let dt = parse(&blob).unwrap();
    assert_eq!(dt.pools[0].devices, [dev_path(&d[0])]);
    assert_eq!(dt.pools[1].devices, [dev_path(&d[1]), dev_path(&d[3])]);
}

/// Node names holding `/` (dtc refuses them, a blob may not) are joined
/// as they are: a path is its ancestors' names, each after a `/`, and one
/// path reached by two nodes is listed once.
#[test]
fn names_holding_a_slash() {
    let mut w = FdtWriter::new().unwrap();
    let root = w.begin_node("").unwrap();
    let rmem = w.begin_node("reserved-memory").unwrap();
    w.property_u32("#address-cells", 1).unwrap();
    w.property_u32("#size-cells", 1).unwrap();
    let p = w.begin_node("restricted@50000000").unwrap();
    w.property_string("compatible", "restricted-dma-pool")
        .unwrap();
    w.property_array_u32("reg", &[0x5000_0000, 0x1000]).unwrap();
    w.property_phandle(1).unwrap();
    w.end_node(p).unwrap();
    w.end_node(rmem).unwrap();
    // `/soc/x`, then `soc_x` and `a_` which become `soc/x` and `a/`.
    for names in [&["soc", "x"][..], &["soc_x"], &["a_", "b"]] {
        let open: Vec<_> = names.iter().map(|n| w.begin_node(n).unwrap()).collect();
        w.property_u32("memory-region", 1).unwrap();
        for n in open.into_iter().rev() {
            w.end_node(n).unwrap();
        }
    }
    w.end_node(root).unwrap();
    let mut blob = w.finish().unwrap();
    for (from, to) in [(&b"soc_x\0"[..], &b"soc/x\0"[..]), (b"a_\0", b"a/\0")] {
        let at = blob.windows(from.len()).position(|s| s == from).unwrap();
        blob[at..at + to.len()].copy_from_slice(to);
    }
    let dt = parse(&blob).unwrap();
    assert_eq!(dt.pools[0].devices, ["/soc/x", "/a//b"]);
}

/// A confidential-VM platform read from a device tree: the default tlb
/// grows (memory from a provider), and the virtio device named by the
/// tree bounces through its own restricted pool. Data is checked both ways
/// through both tlbs.
#[test]
fn a_platform_from_a_device_tree_grows_its_default_tlb_and_restricts_virtio() {
    use std::ptr::NonNull;
    use swiotlb::{
        Attrs, Device, Direction, DmaMask, Error, GrowConfig, Growth, IoTlb, Platform, PoolConfig,
        TlbKind,
    };
    use swiotlb_host::HeapProvider;

    // One 1 MiB restricted pool at 0x5000_0000, used by one virtio device;
    // a second device names no pool.
    let blob = Tree::new((2, 2))
        .pool(pool(
            "restricted@50000000",
            "restricted-dma-pool",
            &[0, 0x5000_0000, 0, 0x10_0000],
            1,
        ))
        .dev(dev("virtio@a000000", &[1]))
        .blob();
    let dt = parse(&blob).unwrap();
    // The region's CPU mapping: heap memory standing for the reserved
    // physical range, alive for the whole test.
    // Held as raw boxes: moving a `Box` would retag its memory under
    // Stacked Borrows and invalidate the pointer the pool holds.
    let mut regions = Regions(Vec::new());
    let mut memory = |_: PhysAddr, len: usize| {
        let raw = Box::into_raw(vec![0u8; len].into_boxed_slice());
        regions.0.push(raw);
        NonNull::new(raw.cast::<u8>())
    };
    // SAFETY: each region lives in `regions`, which outlives the platform
    // (declared before it), and is touched only through its pool.
    let platform = unsafe { Platform::from_dt(&dt, PoolConfig::default(), &mut memory) }.unwrap();
    let mut config = GrowConfig::new(1 << 20, 16 << 20);
    config.grow_by = 1 << 20;
    let default =
        IoTlb::growing(TlbKind::Default, Growth::new(HeapProvider::new(), config)).unwrap();
    let platform = platform.with_default(default);
    assert_eq!(platform.restricted().len(), 1);
    assert_eq!(platform.restricted()[0].name(), "restricted@50000000");

    // Bound by node name and by full path alike.
    let virtio = platform.bind(Device::new(DmaMask::BITS_64), "virtio@a000000");
    let same = platform.bind(Device::new(DmaMask::BITS_64), "/soc/virtio@a000000");
    assert_eq!(virtio.restricted_tlb(), same.restricted_tlb());
    assert!(virtio.restricted_tlb().is_some());
    let other = platform
        .bind(Device::new(DmaMask::BITS_64), "/soc/serial@0")
        .with_force_bounce();
    assert!(other.restricted_tlb().is_none());

    // Virtio: bounced into the restricted pool although its mask reaches
    // the buffer; the device sees the bytes, and what it writes comes back.
    let out: Vec<u8> = (0..1500u32).map(|i| (i * 7) as u8).collect();
    let m = platform
        .map(&virtio, out.clone(), Direction::ToDevice)
        .unwrap();
    let at = m.bounce_phys().expect("restricted devices always bounce").0;
    assert!((0x5000_0000..0x5010_0000).contains(&at));
    // SAFETY: the device side of a live mapping, `len` bytes.
    let seen = unsafe { std::slice::from_raw_parts(m.device_ptr().as_ptr(), m.len()) };
    assert_eq!(seen, &out[..]);
    assert_eq!(m.unmap(), out);
    let m = platform
        .map(&virtio, vec![0u8; 4096], Direction::FromDevice)
        .unwrap();
    // SAFETY: the device writes its side of a live mapping, `len` bytes.
    unsafe { std::ptr::write_bytes(m.device_ptr().as_ptr(), 0xa5, m.len()) };
    assert_eq!(m.unmap(), vec![0xa5u8; 4096]);
    // Its coherent ring comes from the restricted pool too.
    let ring = platform.alloc_coherent(&virtio, 16 << 10).unwrap();
    assert!((0x5000_0000..0x5010_0000).contains(&ring.dma.as_u64()));
    // SAFETY: nothing uses the ring.
    unsafe { platform.free_coherent(&virtio, ring.dma, ring.size) }.unwrap();

    // The other device: 3 MiB live in the growing default tlb, which
    // starts at 1 MiB; every buffer reads back what was written.
    let maps: Vec<_> = (0..12u8)
        .map(|i| {
            platform
                .map_with_attrs(
                    &other,
                    vec![i; 256 << 10],
                    Direction::Bidirectional,
                    Attrs::MAY_SLEEP,
                )
                .unwrap()
        })
        .collect();
    let grown = platform.default_tlb().unwrap().stats();
    assert!(grown.pools_added >= 2, "{grown:?}");
    for (i, m) in maps.iter().enumerate() {
        // SAFETY: the device side of a live mapping, `len` bytes.
        let seen = unsafe { std::slice::from_raw_parts(m.device_ptr().as_ptr(), m.len()) };
        assert!(seen.iter().all(|&b| b == i as u8));
        assert!(!(0x5000_0000..0x5010_0000).contains(&m.bounce_phys().unwrap().0));
    }
    drop(maps);
    assert_eq!(platform.default_tlb().unwrap().stats().pool.io_tlb_used, 0);

    // The restricted tlb does not grow: flooding it fails the virtio
    // device alone.
    let mut held = Vec::new();
    let err = loop {
        match platform.map(&virtio, vec![0u8; 64 << 10], Direction::ToDevice) {
            Ok(m) => held.push(m),
            Err(f) => break f.error,
        }
    };
    assert!(matches!(err, Error::PoolFull { .. }), "{err}");
    assert_eq!(held.len(), 16);
    let m = platform
        .map(&other, vec![1u8; 64 << 10], Direction::ToDevice)
        .unwrap();
    assert!(m.is_bounced());
}

/// A command-line region beside the pools of a device tree: refused where
/// it overlaps one, before anything is mapped; the default tlb otherwise.
#[test]
fn a_command_line_region_must_not_overlap_a_device_tree_pool() {
    use std::mem::MaybeUninit;
    use std::ptr::NonNull;
    use swiotlb::{Error, Platform, PoolConfig};

    let blob = Tree::new((2, 2))
        .pool(pool(
            "restricted@50000000",
            "restricted-dma-pool",
            &[0, 0x5000_0000, 0, 0x10_0000],
            1,
        ))
        .dev(dev("virtio@a000000", &[1]))
        .blob();
    let dt = parse(&blob).unwrap();
    let mut memory = |_: PhysAddr, len: usize| {
        NonNull::new(Box::leak(vec![0u8; len].into_boxed_slice()).as_mut_ptr())
    };
    let mut mapped = 0;
    let mut map = |_: PhysAddr, size: u64| {
        mapped += 1;
        let len = usize::try_from(size).ok()?;
        Some(Box::leak(
            vec![MaybeUninit::new(0u8); len].into_boxed_slice(),
        ))
    };
    // SAFETY: `memory` hands out leaked heap blocks, valid for ever and
    // touched only by their pool; the physical bases are ours to define.
    let e = unsafe {
        Platform::<swiotlb::Fast>::from_cmdline_and_dt(
            "swiotlb.region=2M@0x4ff00000,force",
            &dt,
            PoolConfig::default(),
            &mut memory,
            &mut map,
        )
    }
    .unwrap_err();
    assert_eq!(
        e,
        Error::RegionOverlap {
            base: PhysAddr(0x4ff0_0000),
            size: 2 << 20,
            other: PhysAddr(0x5000_0000),
            other_size: 1 << 20
        }
    );
    // SAFETY: as above.
    let platform = unsafe {
        Platform::<swiotlb::Fast>::from_cmdline_and_dt(
            "swiotlb.region=2M@0x10000000,force",
            &dt,
            PoolConfig::default(),
            &mut memory,
            &mut map,
        )
    }
    .unwrap();
    assert_eq!(mapped, 1);
    assert_eq!(platform.restricted().len(), 1);
    assert_eq!(
        platform.default_tlb().unwrap().first_pool().start(),
        PhysAddr(0x1000_0000)
    );
    assert!(platform.forces_bounce());
}

/// Heap regions standing for reserved memory, freed when dropped (after
/// every pool over them, being declared before the platform).
struct Regions(Vec<*mut [u8]>);

impl Drop for Regions {
    fn drop(&mut self) {
        for &raw in &self.0 {
            // SAFETY: from `Box::into_raw`, freed once, here; the pools
            // over it are gone (the platform was declared later, so it
            // was dropped first).
            drop(unsafe { Box::from_raw(raw) });
        }
    }
}
