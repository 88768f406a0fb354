//! Device trees from arbitrary descriptions, and what the `dt` module must
//! make of each, worked out here from the rules its documentation states.
//!
//! A [`Spec`] is a small tree of the shape the reader cares about:
//! `/reserved-memory` with pools (restricted, shared, the default shared
//! pool, or a carve-out that is none of these), a bus `/soc` with an
//! optional `dma-ranges`, and devices on the bus or at the root naming
//! pools by phandle. [`Spec::blob`] writes it with `vm-fdt`;
//! [`Spec::expect`] says which pools the reader must return, or which
//! problems the tree has (the reader must then refuse it with one of them).

use arbitrary::Arbitrary;
use swiotlb::dt::{DtPoolKind, DMA_BITS_PROPERTY, RESTRICTED_DMA_POOL, SHARED_DMA_POOL};
use vm_fdt::FdtWriter;

/// One child of `/reserved-memory`.
#[derive(Arbitrary, Debug)]
pub struct PoolSpec {
    /// Restricted, shared, the default shared pool, or a carve-out.
    kind: u8,
    /// The base, in 256-byte units, above the offset `high` picks.
    base: u16,
    /// The size, in 256-byte units (0 is a pool of zero bytes).
    size: u16,
    /// 0: low memory; 1: above 4 GiB; 2: near the top of the address
    /// space, where a pool may wrap.
    high: u8,
    /// One of the properties Linux refuses on a restricted pool.
    refused: u8,
    /// Absent, `okay`, `ok`, or `disabled`.
    status: u8,
    /// Whether the node has a phandle a device can name.
    phandle: bool,
}

/// One window of `/soc`'s `dma-ranges`.
#[derive(Arbitrary, Debug)]
pub struct WindowSpec {
    child: u16,
    lo: u16,
    len: u16,
    /// As [`PoolSpec::high`], for the parent range; 2 also puts the bus
    /// address near the top, where translating may overflow.
    high: u8,
}

/// One device.
#[derive(Arbitrary, Debug)]
pub struct DevSpec {
    /// `memory-region` entries: a pool by index, or a phandle no node
    /// has, or the bus's (a node that is not a pool).
    regions: Vec<u8>,
    /// `swiotlb,dma-bits`, if any.
    dma_bits: Option<u8>,
    /// Absent, `okay`, or `disabled`.
    status: u8,
    /// On `/soc` (behind its `dma-ranges`) or at the root.
    on_bus: bool,
}

/// A tree (see the module documentation).
#[derive(Arbitrary, Debug)]
pub struct Spec {
    /// `/reserved-memory`'s `#address-cells` and `#size-cells`: mostly 1
    /// or 2, sometimes a value the reader refuses; `None` leaves the
    /// property out.
    rmem_cells: (Option<u8>, Option<u8>),
    pools: Vec<PoolSpec>,
    /// `/soc`'s `#address-cells` and `#size-cells`, 1 or 2.
    bus_cells: (bool, bool),
    /// `/soc`'s `dma-ranges`: none, or these windows (none at all is the
    /// empty property, identity).
    windows: Option<Vec<WindowSpec>>,
    /// A cell too many at the end of `dma-ranges`.
    ranges_cut: bool,
    devices: Vec<DevSpec>,
}

/// The most pools and devices a spec is held to; more are dropped, so a
/// run stays short.
const MAX_NODES: usize = 8;

/// The phandle of `/soc`: a node a `memory-region` may name that is no
/// pool.
const BUS_PHANDLE: u32 = 0x5000;
/// A phandle no node has.
const DANGLING: u32 = 0xdead;

/// A pool the reader must return.
#[derive(Debug, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    pub path: String,
    pub base: u64,
    pub size: u64,
    pub kind: DtPoolKind,
    pub devices: Vec<String>,
}

/// What is wrong with a tree, by `DtError::kind`.
pub type Problems = Vec<&'static str>;

fn offset(high: u8) -> u64 {
    match high % 4 {
        1 => 1 << 32,
        2 => u64::MAX - 0xff_ffff,
        _ => 0,
    }
}

/// `v` as `n` big-endian cells (the low ones, if it needs more).
fn to_cells(v: u64, n: usize) -> Vec<u32> {
    (0..n)
        .rev()
        .map(|i| if i >= 2 { 0 } else { (v >> (32 * i)) as u32 })
        .collect()
}

/// What `n` cells of `v` read back as: the low `32 * n` bits.
fn truncated(v: u64, n: usize) -> u64 {
    if n >= 2 {
        v
    } else {
        v & ((1u64 << (32 * n)) - 1)
    }
}

impl PoolSpec {
    fn compatible(&self) -> &'static str {
        match self.kind % 4 {
            0 => RESTRICTED_DMA_POOL,
            1 | 2 => SHARED_DMA_POOL,
            _ => "ramoops",
        }
    }

    fn is_pool(&self) -> bool {
        self.kind % 4 != 3
    }

    /// The empty property it carries, if any: `linux,dma-default` for
    /// the default pool, else maybe one Linux refuses on a restricted one.
    fn flag(&self) -> Option<&'static str> {
        if self.kind % 4 == 2 {
            return Some("linux,dma-default");
        }
        match self.refused % 8 {
            0 => Some("reusable"),
            1 => Some("linux,cma-default"),
            2 => Some("no-map"),
            3 if self.kind.is_multiple_of(4) => Some("linux,dma-default"),
            _ => None,
        }
    }

    fn status(&self) -> Option<&'static str> {
        match self.status % 8 {
            0 => Some("okay"),
            1 => Some("ok"),
            2 => Some("disabled"),
            _ => None,
        }
    }

    fn available(&self) -> bool {
        self.status() != Some("disabled")
    }

    fn base(&self) -> u64 {
        offset(self.high).wrapping_add(u64::from(self.base) << 8)
    }

    fn size(&self) -> u64 {
        u64::from(self.size) << 8
    }
}

impl DevSpec {
    fn status(&self) -> Option<&'static str> {
        match self.status % 4 {
            0 => Some("okay"),
            1 => Some("disabled"),
            _ => None,
        }
    }
}

fn cells_of(c: Option<u8>) -> Option<u32> {
    c.map(|c| match c % 8 {
        0 => 0,
        1..=3 => 1,
        4..=6 => 2,
        _ => 3 + u32::from(c >> 7),
    })
}

impl Spec {
    fn pools(&self) -> &[PoolSpec] {
        &self.pools[..self.pools.len().min(MAX_NODES)]
    }

    fn devices(&self) -> impl Iterator<Item = (usize, &DevSpec)> {
        let devs = &self.devices[..self.devices.len().min(MAX_NODES)];
        // Tree order: the bus's devices, then the root's.
        let bus = devs.iter().enumerate().filter(|(_, d)| d.on_bus);
        let root = devs.iter().enumerate().filter(|(_, d)| !d.on_bus);
        bus.chain(root)
    }

    fn bus_cells(&self) -> (usize, usize) {
        (
            1 + usize::from(self.bus_cells.0),
            1 + usize::from(self.bus_cells.1),
        )
    }

    fn windows(&self) -> &[WindowSpec] {
        self.windows
            .as_deref()
            .map_or(&[], |w| &w[..w.len().min(MAX_NODES)])
    }

    /// The phandle a `memory-region` entry names.
    fn phandle_of(&self, entry: u8) -> u32 {
        let n = self.pools().len();
        match usize::from(entry) % (n + 2) {
            i if i < n => i as u32 + 1,
            i if i == n => DANGLING,
            _ => BUS_PHANDLE,
        }
    }

    /// The blob, written with `vm-fdt`.
    pub fn blob(&self) -> Vec<u8> {
        let mut w = FdtWriter::new().expect("writer");
        let root = w.begin_node("").expect("root");
        w.property_u32("#address-cells", 2).expect("prop");
        w.property_u32("#size-cells", 2).expect("prop");

        let (ac, sc) = (cells_of(self.rmem_cells.0), cells_of(self.rmem_cells.1));
        let rmem = w.begin_node("reserved-memory").expect("node");
        if let Some(ac) = ac {
            w.property_u32("#address-cells", ac).expect("prop");
        }
        if let Some(sc) = sc {
            w.property_u32("#size-cells", sc).expect("prop");
        }
        w.property_null("ranges").expect("prop");
        for (i, p) in self.pools().iter().enumerate() {
            let n = w.begin_node(&format!("pool@{i:x}")).expect("node");
            w.property_string("compatible", p.compatible())
                .expect("prop");
            let mut reg = to_cells(p.base(), ac.unwrap_or(2) as usize);
            reg.extend(to_cells(p.size(), sc.unwrap_or(1) as usize));
            w.property_array_u32("reg", &reg).expect("prop");
            if let Some(f) = p.flag() {
                w.property_null(f).expect("prop");
            }
            if let Some(s) = p.status() {
                w.property_string("status", s).expect("prop");
            }
            if p.phandle {
                w.property_phandle(i as u32 + 1).expect("prop");
            }
            w.end_node(n).expect("end");
        }
        w.end_node(rmem).expect("end");

        let (bac, bsc) = self.bus_cells();
        let soc = w.begin_node("soc").expect("node");
        w.property_string("compatible", "simple-bus").expect("prop");
        w.property_u32("#address-cells", bac as u32).expect("prop");
        w.property_u32("#size-cells", bsc as u32).expect("prop");
        w.property_phandle(BUS_PHANDLE).expect("prop");
        if self.windows.is_some() {
            let mut cells = Vec::new();
            for win in self.windows() {
                let (child, lo, len) = window_values(win);
                cells.extend(to_cells(child, bac));
                cells.extend(to_cells(lo, 2));
                cells.extend(to_cells(len, bsc));
            }
            if self.ranges_cut {
                cells.push(0);
            }
            w.property_array_u32("dma-ranges", &cells).expect("prop");
        }
        let mut root_devs = Vec::new();
        for (i, d) in self.devices() {
            if !d.on_bus {
                root_devs.push((i, d));
                continue;
            }
            self.write_device(&mut w, i, d);
        }
        w.end_node(soc).expect("end");
        for (i, d) in root_devs {
            self.write_device(&mut w, i, d);
        }
        w.end_node(root).expect("end");
        w.finish().expect("finish")
    }

    fn write_device(&self, w: &mut FdtWriter, i: usize, d: &DevSpec) {
        let n = w.begin_node(&format!("dev@{i:x}")).expect("node");
        w.property_string("compatible", "virtio,mmio")
            .expect("prop");
        let regions: Vec<u32> = d
            .regions
            .iter()
            .take(MAX_NODES)
            .map(|&e| self.phandle_of(e))
            .collect();
        w.property_array_u32("memory-region", &regions)
            .expect("prop");
        if let Some(b) = d.dma_bits {
            w.property_u32(DMA_BITS_PROPERTY, u32::from(b))
                .expect("prop");
        }
        if let Some(s) = d.status() {
            w.property_string("status", s).expect("prop");
        }
        w.end_node(n).expect("end");
    }

    /// The pools the reader must return, or the problems it must refuse
    /// the tree for.
    pub fn expect(&self) -> Result<Vec<Pool>, Problems> {
        let mut problems = Vec::new();
        let (ac, sc) = (cells_of(self.rmem_cells.0), cells_of(self.rmem_cells.1));
        // Both must be given, `#address-cells` at most 3, `#size-cells`
        // at most 2.
        let (Some(ac), Some(sc)) = (ac, sc) else {
            return Err(vec!["bad_property"]);
        };
        if ac > 3 || sc > 2 {
            return Err(vec!["bad_property"]);
        }
        let mut pools: Vec<Pool> = Vec::new();
        // Index in `pools` of each spec pool that made one.
        let mut made: Vec<Option<usize>> = Vec::new();
        for (i, p) in self.pools().iter().enumerate() {
            made.push(None);
            if !p.available() || !p.is_pool() {
                continue;
            }
            let kind = match p.kind % 4 {
                0 => {
                    if p.flag().is_some() {
                        problems.push("unsupported");
                        continue;
                    }
                    DtPoolKind::Restricted
                }
                2 => DtPoolKind::Default,
                _ if p.flag() == Some("linux,dma-default") => DtPoolKind::Default,
                _ => DtPoolKind::Shared,
            };
            // A region needs an address of one or two cells and a size.
            if ac == 0 || sc == 0 || ac > 2 {
                problems.push("bad_reg");
                continue;
            }
            let base = truncated(p.base(), ac as usize);
            let size = truncated(p.size(), sc as usize);
            if size == 0 {
                problems.push("zero_size");
                continue;
            }
            if base.checked_add(size).is_none() {
                problems.push("bad_reg");
                continue;
            }
            made[i] = Some(pools.len());
            pools.push(Pool {
                name: format!("pool@{i:x}"),
                path: format!("/reserved-memory/pool@{i:x}"),
                base,
                size,
                kind,
                devices: Vec::new(),
            });
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        for (i, a) in pools.iter().enumerate() {
            for b in &pools[i + 1..] {
                if a.base < b.base + b.size && b.base < a.base + a.size {
                    return Err(vec!["overlap"]);
                }
            }
        }

        // Bindings, device by device in tree order.
        let phandle_node = |ph: u32| -> Option<Option<usize>> {
            // Some(pool index or None for a node that is no pool).
            if ph == BUS_PHANDLE {
                return Some(None);
            }
            let i = (ph as usize).checked_sub(1)?;
            let p = self.pools().get(i)?;
            p.phandle.then_some(made[i])
        };
        for (i, d) in self.devices() {
            if d.status() == Some("disabled") {
                continue;
            }
            let path = if d.on_bus {
                format!("/soc/dev@{i:x}")
            } else {
                format!("/dev@{i:x}")
            };
            let regions: Vec<u32> = d
                .regions
                .iter()
                .take(MAX_NODES)
                .map(|&e| self.phandle_of(e))
                .collect();
            if regions.is_empty() {
                problems.push("bad_property");
                continue;
            }
            for ph in regions {
                let Some(target) = phandle_node(ph) else {
                    problems.push("dangling_phandle");
                    break;
                };
                let Some(p) = target else { continue };
                let pool = &pools[p];
                let last = pool.base + (pool.size - 1);
                let dma_last = if d.on_bus && self.windows.is_some() {
                    match self.translate(pool.base, last) {
                        Ok(Some(d)) => d,
                        Ok(None) => {
                            problems.push("unreachable");
                            continue;
                        }
                        Err(()) => {
                            problems.push("bad_property");
                            continue;
                        }
                    }
                } else {
                    last
                };
                match d.dma_bits {
                    Some(b) if b == 0 || b > 64 => {
                        problems.push("bad_property");
                        continue;
                    }
                    Some(b) if b < 64 && dma_last >> b != 0 => {
                        problems.push("unreachable");
                        continue;
                    }
                    _ => {}
                }
                if !pools[p].devices.contains(&path) {
                    pools[p].devices.push(path.clone());
                }
            }
        }
        if problems.is_empty() {
            Ok(pools)
        } else {
            Err(problems)
        }
    }

    /// The bus address of a pool's last byte through `/soc`'s
    /// `dma-ranges`: `Ok(None)` if no window holds the pool whole, `Err`
    /// for a property that cannot be read or a translation past 2^64.
    fn translate(&self, base: u64, last: u64) -> Result<Option<u64>, ()> {
        if self.ranges_cut {
            return Err(());
        }
        let windows = self.windows();
        if windows.is_empty() {
            // The empty property: identity.
            return Ok(Some(last));
        }
        let (bac, bsc) = self.bus_cells();
        for win in windows {
            let (child, lo, len) = window_values(win);
            let (child, len) = (truncated(child, bac), truncated(len, bsc));
            if len == 0 {
                continue;
            }
            let hi = lo.saturating_add(len - 1);
            if lo <= base && last <= hi {
                return child.checked_add(last - lo).map(Some).ok_or(());
            }
        }
        Ok(None)
    }
}

/// A window's bus address, parent address and length, before cells cut
/// them.
fn window_values(w: &WindowSpec) -> (u64, u64, u64) {
    let lo = offset(w.high).wrapping_add(u64::from(w.lo) << 8);
    let child = if w.high % 4 == 2 {
        u64::MAX - (u64::from(w.child) << 4)
    } else {
        u64::from(w.child) << 8
    };
    (child, lo, u64::from(w.len) << 8)
}
