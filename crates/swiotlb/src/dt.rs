//! Bounce pools described by a flattened device tree.
//!
//! On Arm and RISC-V boards, and in protected-VM guests (pKVM, Gunyah), the
//! firmware describes the memory a device may use for DMA as a child of
//! `/reserved-memory`, and points each device at it with a `memory-region`
//! phandle. [`parse`] reads such a blob and returns the pools, what kind
//! each is, and which devices use which, with Linux's rules:
//!
//! - `compatible = "restricted-dma-pool"` is a per-device swiotlb pool
//!   (Linux `kernel/dma/swiotlb.c`, `rmem_swiotlb_setup`). Linux refuses
//!   one that also carries `reusable`, `linux,cma-default`,
//!   `linux,dma-default` or `no-map`: the pool must be ordinary mapped
//!   memory that nothing else allocates from. So do we
//!   ([`DtError::Unsupported`]).
//! - `compatible = "shared-dma-pool"` is the coherent-memory (or, with
//!   `reusable`, CMA) binding of `kernel/dma/coherent.c`. It is recognised
//!   and reported ([`DtPoolKind::Shared`], or [`DtPoolKind::Default`] with
//!   `linux,dma-default`), not treated as a bounce pool.
//! - `reg` is read with `/reserved-memory`'s `#address-cells` and
//!   `#size-cells`, which Linux requires to be present
//!   (`__reserved_mem_check_root`). Only the first `(address, size)` entry
//!   makes the region, as in Linux's `__reserved_mem_reserve_reg`.
//! - A node whose `status` is neither absent, `"okay"` nor `"ok"` is
//!   skipped, pool or device (Linux `of_fdt_device_is_available`).
//! - Devices sharing one `memory-region` share one pool, as Linux's
//!   `rmem_swiotlb_device_init` shares one `io_tlb_mem` between them.
//!
//! Where Linux only warns, this module refuses: overlapping pools (Linux's
//! `__rmem_check_for_overlap` prints "OVERLAP DETECTED!" and goes on), a
//! pool the device it serves cannot reach, a `memory-region` phandle that
//! names no node. Every error names the node at fault.
//!
//! # Reachability
//!
//! A device reaches a pool when the pool lies, whole, inside one window of
//! the `dma-ranges` of the nearest ancestor that has that property (Linux
//! `of_dma_get_range`); an empty `dma-ranges` or none at all means the bus
//! carries physical addresses unchanged. Only that one level is
//! translated, which is how most SoCs describe their buses. A device may
//! also carry `swiotlb,dma-bits = <N>`, a property of this crate (not a
//! Linux binding) that stands for the DMA mask its driver would set: the
//! pool's device addresses must then fit in `N` bits.
//!
//! # Robustness
//!
//! The blob may come from anywhere. The `fdt` crate that walks it trusts
//! the blob's structure (it indexes and unwraps), so [`parse`] first checks
//! the whole structure block itself, token by token, and hands `fdt` only
//! blobs it has proved well formed. Any malformed blob is
//! [`DtError::BadBlob`], never a panic.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::addr::PhysAddr;

/// The `compatible` of a per-device swiotlb pool.
pub const RESTRICTED_DMA_POOL: &str = "restricted-dma-pool";
/// The `compatible` of a coherent-memory or CMA pool.
pub const SHARED_DMA_POOL: &str = "shared-dma-pool";
/// Our own device property: the device's DMA mask width in bits.
pub const DMA_BITS_PROPERTY: &str = "swiotlb,dma-bits";

/// Deepest node nesting accepted, as Linux's `FDT_MAX_DEPTH`
/// (`drivers/of/fdt.c`); it also bounds the recursion of the walk.
pub const MAX_DEPTH: usize = 64;

const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;
const HEADER_LEN: usize = 40;

/// What a pool is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DtPoolKind {
    /// `restricted-dma-pool`: a swiotlb pool private to the devices that
    /// name it; all their DMA bounces through it.
    Restricted,
    /// `shared-dma-pool`: coherent memory (or CMA with `reusable`) handed
    /// out by `dma_alloc_coherent`, not a bounce pool.
    Shared,
    /// `shared-dma-pool` with `linux,dma-default`: the global coherent
    /// pool of devices that name no pool (`dma_init_global_coherent`).
    Default,
}

impl DtPoolKind {
    /// A short lower-case name: `restricted`, `shared` or `default`.
    pub const fn name(self) -> &'static str {
        match self {
            DtPoolKind::Restricted => "restricted",
            DtPoolKind::Shared => "shared",
            DtPoolKind::Default => "default",
        }
    }
}

impl fmt::Display for DtPoolKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One pool found under `/reserved-memory`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DtPool<'a> {
    /// The node's name, unit address included (`restricted@50000000`).
    pub name: &'a str,
    /// The node's full path (`/reserved-memory/restricted@50000000`).
    pub path: String,
    /// CPU physical address of the first byte.
    pub base: PhysAddr,
    /// Bytes in the pool; never zero.
    pub size: u64,
    /// What the pool is for.
    pub kind: DtPoolKind,
    /// Full paths of the devices whose `memory-region` names this pool, in
    /// tree order.
    pub devices: Vec<String>,
}

impl DtPool<'_> {
    /// One past the last byte (`base + size`; never wraps).
    pub fn end(&self) -> u64 {
        self.base.0 + self.size
    }
}

/// Every pool of a device tree, in tree order.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DtPools<'a> {
    /// The pools, in the order of their nodes.
    pub pools: Vec<DtPool<'a>>,
}

impl<'a> DtPools<'a> {
    /// The pool whose node has this name or path.
    pub fn get(&self, name_or_path: &str) -> Option<&DtPool<'a>> {
        self.pools
            .iter()
            .find(|p| p.name == name_or_path || p.path == name_or_path)
    }

    /// The pool a device (by full path) is assigned to.
    pub fn pool_of(&self, device: &str) -> Option<&DtPool<'a>> {
        self.pools
            .iter()
            .find(|p| p.devices.iter().any(|d| d == device))
    }
}

/// Why a blob is not a well-formed flattened device tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlobProblem {
    /// Shorter than the 40-byte header, or than its `totalsize`.
    Truncated,
    /// The magic is not `0xd00dfeed`.
    BadMagic,
    /// A version before 17, which lacks the structure block's size.
    OldVersion,
    /// The structure or strings block lies outside the blob.
    BlockOutOfBounds,
    /// A token that is not where the grammar allows it, or unknown.
    BadToken,
    /// A `NOP` token (left by in-place editing); recompile the source.
    Nop,
    /// A node or property name without its terminating NUL, or not UTF-8.
    BadName,
    /// A property value that runs past the structure block.
    BadProperty,
    /// Nodes nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// The root node is missing, named, or followed by another node.
    BadRoot,
}

impl fmt::Display for BlobProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlobProblem::Truncated => "truncated",
            BlobProblem::BadMagic => "bad magic (not a flattened device tree)",
            BlobProblem::OldVersion => "format version before 17",
            BlobProblem::BlockOutOfBounds => "structure or strings block outside the blob",
            BlobProblem::BadToken => "unexpected token in the structure block",
            BlobProblem::Nop => "NOP token (an edited blob; recompile it)",
            BlobProblem::BadName => "name not NUL-terminated UTF-8",
            BlobProblem::BadProperty => "property value runs past the structure block",
            BlobProblem::TooDeep => "nodes nested too deep",
            BlobProblem::BadRoot => "missing, named or repeated root node",
        })
    }
}

/// Everything that can be wrong with a device tree's DMA pools.
///
/// Node names borrow from the blob, so the error is `Copy`. The `Display`
/// text starts with `swiotlb:` and names the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DtError<'a> {
    /// The blob is not a well-formed flattened device tree.
    BadBlob {
        /// Byte offset in the blob where the problem was found.
        offset: usize,
        /// What is wrong.
        problem: BlobProblem,
    },
    /// A pool's `reg` is missing, shorter than one `(address, size)`
    /// entry, wider than 64 bits, or wraps around the address space.
    BadReg {
        /// The pool node.
        node: &'a str,
    },
    /// A property of the wrong length or value (`#address-cells`,
    /// `memory-region`, `dma-ranges`, `swiotlb,dma-bits`), or a required
    /// one missing.
    BadProperty {
        /// The node carrying it.
        node: &'a str,
        /// The property.
        property: &'static str,
    },
    /// A pool of zero bytes.
    ZeroSize {
        /// The pool node.
        node: &'a str,
    },
    /// A `restricted-dma-pool` with a property Linux refuses on one
    /// (`rmem_swiotlb_setup`): `reusable`, `linux,cma-default`,
    /// `linux,dma-default` or `no-map`.
    Unsupported {
        /// The pool node.
        node: &'a str,
        /// The property.
        property: &'static str,
    },
    /// Two pools share memory.
    Overlap {
        /// The first pool, in tree order.
        a: &'a str,
        /// The second pool.
        b: &'a str,
    },
    /// A device's `memory-region` names a phandle no node has.
    DanglingPhandle {
        /// The device node.
        device: &'a str,
        /// The phandle value.
        phandle: u32,
    },
    /// A device is assigned a pool outside what its bus or DMA mask
    /// reaches.
    Unreachable {
        /// The device node.
        device: &'a str,
        /// The pool node.
        pool: &'a str,
    },
}

impl DtError<'_> {
    /// A short snake-case name of the variant, for machine-readable output.
    pub const fn kind(&self) -> &'static str {
        match self {
            DtError::BadBlob { .. } => "bad_blob",
            DtError::BadReg { .. } => "bad_reg",
            DtError::BadProperty { .. } => "bad_property",
            DtError::ZeroSize { .. } => "zero_size",
            DtError::Unsupported { .. } => "unsupported",
            DtError::Overlap { .. } => "overlap",
            DtError::DanglingPhandle { .. } => "dangling_phandle",
            DtError::Unreachable { .. } => "unreachable",
        }
    }
}

impl fmt::Display for DtError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DtError::BadBlob { offset, problem } => {
                write!(f, "swiotlb: bad device tree blob at byte {offset}: {problem}")
            }
            DtError::BadReg { node } => write!(
                f,
                "swiotlb: reserved memory {node}: reg missing, short, wider than 64 bits or wrapping"
            ),
            DtError::BadProperty { node, property } => {
                write!(f, "swiotlb: node {node}: bad or missing {property}")
            }
            DtError::ZeroSize { node } => {
                write!(f, "swiotlb: reserved memory {node} has zero size")
            }
            DtError::Unsupported { node, property } => write!(
                f,
                "swiotlb: reserved memory {node}: restricted-dma-pool with {property} not supported"
            ),
            DtError::Overlap { a, b } => {
                write!(f, "swiotlb: reserved memory {a} overlaps {b}")
            }
            DtError::DanglingPhandle { device, phandle } => write!(
                f,
                "swiotlb: device {device}: memory-region phandle {phandle:#x} names no node"
            ),
            DtError::Unreachable { device, pool } => write!(
                f,
                "swiotlb: device {device} cannot reach its DMA pool {pool}"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for DtError<'_> {}

/// Reads the DMA pools of a flattened device tree blob.
///
/// ```
/// // Not a device tree: a typed error, not a panic.
/// let e = swiotlb::dt::parse(b"not a dtb").unwrap_err();
/// assert_eq!(e.kind(), "bad_blob");
/// ```
pub fn parse(blob: &[u8]) -> Result<DtPools<'_>, DtError<'_>> {
    check_structure(blob)?;
    let fdt = fdt::Fdt::new(blob).map_err(|_| DtError::BadBlob {
        offset: 0,
        problem: BlobProblem::Truncated,
    })?;
    let root = fdt.find_node("/").ok_or(DtError::BadBlob {
        offset: 0,
        problem: BlobProblem::BadRoot,
    })?;
    let mut tree = Tree { nodes: Vec::new() };
    tree.walk(root, None, String::from("/"), 0);
    tree.pools()
}

/// One node, flattened out of the blob so the rules below need no further
/// walking; names and values borrow from the blob.
struct Node<'a> {
    name: &'a str,
    path: String,
    parent: Option<usize>,
    props: Vec<(&'a str, &'a [u8])>,
}

struct Tree<'a> {
    nodes: Vec<Node<'a>>,
}

impl<'a> Tree<'a> {
    fn walk(
        &mut self,
        node: fdt::node::FdtNode<'_, 'a>,
        parent: Option<usize>,
        path: String,
        depth: usize,
    ) {
        let index = self.nodes.len();
        self.nodes.push(Node {
            name: if parent.is_none() { "/" } else { node.name },
            path,
            parent,
            props: node.properties().map(|p| (p.name, p.value)).collect(),
        });
        // check_structure bounds the depth; this keeps the recursion
        // bounded even if the two ever disagree.
        if depth >= MAX_DEPTH {
            return;
        }
        for child in node.children() {
            let parent_path = &self.nodes[index].path;
            let mut path = String::with_capacity(parent_path.len() + 1 + child.name.len());
            path.push_str(parent_path);
            if parent.is_some() {
                path.push('/');
            }
            path.push_str(child.name);
            self.walk(child, Some(index), path, depth + 1);
        }
    }

    fn prop(&self, i: usize, name: &str) -> Option<&'a [u8]> {
        self.nodes[i]
            .props
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }

    fn has(&self, i: usize, name: &str) -> bool {
        self.prop(i, name).is_some()
    }

    /// Linux `of_fdt_device_is_available`: absent, `"okay"` or `"ok"`.
    fn available(&self, i: usize) -> bool {
        match self.prop(i, "status") {
            None => true,
            Some(v) => matches!(strip_nul(v), b"okay" | b"ok"),
        }
    }

    fn compatible(&self, i: usize, what: &str) -> bool {
        self.prop(i, "compatible").is_some_and(|v| {
            v.split(|&b| b == 0)
                .any(|s| !s.is_empty() && s == what.as_bytes())
        })
    }

    /// A `#address-cells` / `#size-cells` value of node `i`: its own, or
    /// the Devicetree Specification's default (2 and 1) when absent.
    fn cells(&self, i: usize, name: &'static str, default: u32) -> Result<u32, DtError<'a>> {
        match self.prop(i, name) {
            None => Ok(default),
            Some(v) => match be32(v) {
                Some(n) if n <= 2 || name == "#address-cells" && n <= 3 => Ok(n),
                _ => Err(DtError::BadProperty {
                    node: self.nodes[i].name,
                    property: name,
                }),
            },
        }
    }

    fn addr_cells(&self, i: usize) -> Result<u32, DtError<'a>> {
        self.cells(i, "#address-cells", 2)
    }

    fn size_cells(&self, i: usize) -> Result<u32, DtError<'a>> {
        self.cells(i, "#size-cells", 1)
    }

    fn pools(&self) -> Result<DtPools<'a>, DtError<'a>> {
        let mut pools: Vec<DtPool<'a>> = Vec::new();
        // Node index of each pool, to match memory-region targets.
        let mut pool_nodes: Vec<usize> = Vec::new();
        let rmem = (0..self.nodes.len())
            .find(|&i| self.nodes[i].parent == Some(0) && self.nodes[i].name == "reserved-memory");
        if let Some(rmem) = rmem {
            // Linux `__reserved_mem_check_root`: both cell counts must be
            // given; it ignores the whole node otherwise. We say so.
            for property in ["#address-cells", "#size-cells"] {
                if !self.has(rmem, property) {
                    return Err(DtError::BadProperty {
                        node: self.nodes[rmem].name,
                        property,
                    });
                }
            }
            let ac = self.addr_cells(rmem)?;
            let sc = self.size_cells(rmem)?;
            for i in 0..self.nodes.len() {
                if self.nodes[i].parent != Some(rmem) || !self.available(i) {
                    continue;
                }
                let kind = if self.compatible(i, RESTRICTED_DMA_POOL) {
                    self.check_restricted(i)?;
                    DtPoolKind::Restricted
                } else if self.compatible(i, SHARED_DMA_POOL) {
                    if self.has(i, "linux,dma-default") {
                        DtPoolKind::Default
                    } else {
                        DtPoolKind::Shared
                    }
                } else {
                    // Firmware carve-outs, ramoops and the like: not ours.
                    continue;
                };
                let (base, size) = self.reg(i, ac, sc)?;
                pools.push(DtPool {
                    name: self.nodes[i].name,
                    path: self.nodes[i].path.clone(),
                    base: PhysAddr(base),
                    size,
                    kind,
                    devices: Vec::new(),
                });
                pool_nodes.push(i);
            }
        }
        for (x, a) in pools.iter().enumerate() {
            for b in &pools[x + 1..] {
                if a.base.0 < b.end() && b.base.0 < a.end() {
                    return Err(DtError::Overlap {
                        a: a.name,
                        b: b.name,
                    });
                }
            }
        }
        self.assign(&mut pools, &pool_nodes)?;
        Ok(DtPools { pools })
    }

    /// Linux `rmem_swiotlb_setup`: a bounce pool must be ordinary, mapped
    /// memory no other allocator shares.
    fn check_restricted(&self, i: usize) -> Result<(), DtError<'a>> {
        for property in [
            "reusable",
            "linux,cma-default",
            "linux,dma-default",
            "no-map",
        ] {
            if self.has(i, property) {
                return Err(DtError::Unsupported {
                    node: self.nodes[i].name,
                    property,
                });
            }
        }
        Ok(())
    }

    /// The first `(address, size)` entry of `reg`.
    fn reg(&self, i: usize, ac: u32, sc: u32) -> Result<(u64, u64), DtError<'a>> {
        let node = self.nodes[i].name;
        let bad = DtError::BadReg { node };
        let v = self.prop(i, "reg").ok_or(bad)?;
        // A region needs both an address and a size; more than two cells
        // of either does not fit a physical address.
        if ac == 0 || sc == 0 || ac > 2 {
            return Err(bad);
        }
        let (ac, sc) = (ac as usize * 4, sc as usize * 4);
        if v.len() < ac + sc {
            return Err(bad);
        }
        let base = cells(&v[..ac]).ok_or(bad)?;
        let size = cells(&v[ac..ac + sc]).ok_or(bad)?;
        if size == 0 {
            return Err(DtError::ZeroSize { node });
        }
        base.checked_add(size).ok_or(bad)?;
        Ok((base, size))
    }

    fn assign(&self, pools: &mut [DtPool<'a>], pool_nodes: &[usize]) -> Result<(), DtError<'a>> {
        // Linux `of_find_node_by_phandle`: `phandle`, or the older
        // `linux,phandle`.
        let mut by_phandle: BTreeMap<u32, usize> = BTreeMap::new();
        for i in 0..self.nodes.len() {
            for name in ["phandle", "linux,phandle"] {
                if let Some(p) = self.prop(i, name).and_then(be32) {
                    by_phandle.entry(p).or_insert(i);
                }
            }
        }
        for dev in 0..self.nodes.len() {
            let Some(v) = self.prop(dev, "memory-region") else {
                continue;
            };
            if !self.available(dev) {
                continue;
            }
            let device = self.nodes[dev].name;
            if v.is_empty() || v.len() % 4 != 0 {
                return Err(DtError::BadProperty {
                    node: device,
                    property: "memory-region",
                });
            }
            for chunk in v.chunks_exact(4) {
                let phandle = be32(chunk).unwrap_or(0);
                let target = by_phandle
                    .get(&phandle)
                    .copied()
                    .ok_or(DtError::DanglingPhandle { device, phandle })?;
                // A memory-region may also name a carve-out a driver uses
                // by hand (firmware, frame buffers); only pools matter.
                let Some(p) = pool_nodes.iter().position(|&n| n == target) else {
                    continue;
                };
                if !self.reaches(dev, pools[p].base.0, pools[p].size)? {
                    return Err(DtError::Unreachable {
                        device,
                        pool: pools[p].name,
                    });
                }
                let path = &self.nodes[dev].path;
                if !pools[p].devices.iter().any(|d| d == path) {
                    pools[p].devices.push(path.clone());
                }
            }
        }
        Ok(())
    }

    /// Whether device `dev` reaches `size` bytes at physical `base`: see
    /// the module's "Reachability".
    fn reaches(&self, dev: usize, base: u64, size: u64) -> Result<bool, DtError<'a>> {
        let last = base + (size - 1);
        let mut dma_last = last;
        let mut bus = self.nodes[dev].parent;
        while let Some(b) = bus {
            let Some(ranges) = self.prop(b, "dma-ranges") else {
                bus = self.nodes[b].parent;
                continue;
            };
            if ranges.is_empty() {
                // Identity, Linux `of_dma_get_range` with an empty
                // property.
                break;
            }
            let bad = DtError::BadProperty {
                node: self.nodes[b].name,
                property: "dma-ranges",
            };
            let child_ac = self.addr_cells(b)? as usize * 4;
            let sc = self.size_cells(b)? as usize * 4;
            let parent_ac = match self.nodes[b].parent {
                Some(p) => self.addr_cells(p)? as usize * 4,
                None => return Err(bad),
            };
            let entry = child_ac + parent_ac + sc;
            if entry == 0 || ranges.len() % entry != 0 || sc == 0 {
                return Err(bad);
            }
            let mut window = None;
            for e in ranges.chunks_exact(entry) {
                // A three-cell child address is a PCI address: its top
                // cell holds flags, the low two the address.
                let child = cells(&e[child_ac.saturating_sub(8)..child_ac]).ok_or(bad)?;
                let parent = cells(&e[child_ac..child_ac + parent_ac]).ok_or(bad)?;
                let len = cells(&e[child_ac + parent_ac..]).ok_or(bad)?;
                if len == 0 {
                    continue;
                }
                let parent_last = parent.saturating_add(len - 1);
                if base >= parent && last <= parent_last {
                    window = Some(child.checked_add(last - parent).ok_or(bad)?);
                    break;
                }
            }
            match window {
                Some(d) => dma_last = d,
                None => return Ok(false),
            }
            break;
        }
        if let Some(v) = self.prop(dev, DMA_BITS_PROPERTY) {
            let bits = be32(v)
                .filter(|b| (1..=64).contains(b))
                .ok_or(DtError::BadProperty {
                    node: self.nodes[dev].name,
                    property: DMA_BITS_PROPERTY,
                })?;
            if bits < 64 && dma_last >> bits != 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

fn strip_nul(v: &[u8]) -> &[u8] {
    v.strip_suffix(&[0]).unwrap_or(v)
}

/// A property that is exactly one big-endian cell.
fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.try_into().ok()?))
}

/// One or two big-endian cells (an empty slice is 0).
fn cells(v: &[u8]) -> Option<u64> {
    if v.len() > 8 || v.len() % 4 != 0 {
        return None;
    }
    Some(
        v.chunks_exact(4)
            .fold(0u64, |acc, c| acc << 32 | u64::from(be32(c).unwrap_or(0))),
    )
}

/// Reads a big-endian `u32` at `at`, or `None` past the end.
fn word(blob: &[u8], at: usize) -> Option<u32> {
    let b = blob.get(at..at.checked_add(4)?)?;
    be32(b)
}

/// Proves the blob well formed before the `fdt` crate walks it: header
/// and blocks in bounds, every token where the grammar puts it, every name
/// NUL-terminated UTF-8 inside its block, every property inside the
/// structure block, depth bounded, exactly one unnamed root.
fn check_structure(blob: &[u8]) -> Result<(), DtError<'_>> {
    let err = |offset: usize, problem| Err(DtError::BadBlob { offset, problem });
    let h = |n: usize| word(blob, n * 4).map(|w| w as usize);
    let (Some(magic), Some(total)) = (h(0), h(1)) else {
        return err(0, BlobProblem::Truncated);
    };
    if magic != FDT_MAGIC as usize {
        return err(0, BlobProblem::BadMagic);
    }
    if blob.len() < HEADER_LEN || total > blob.len() || total < HEADER_LEN {
        return err(4, BlobProblem::Truncated);
    }
    let field = |n: usize| h(n).unwrap_or(0);
    let (off_struct, off_strings, version) = (field(2), field(3), field(5));
    let (size_strings, size_struct) = (field(8), field(9));
    if version < 17 {
        return err(20, BlobProblem::OldVersion);
    }
    let block = |off: usize, size: usize| {
        off.checked_add(size)
            .filter(|&end| off >= HEADER_LEN && end <= total)
            .map(|end| off..end)
    };
    let (Some(st), Some(strings)) = (
        block(off_struct, size_struct),
        block(off_strings, size_strings),
    ) else {
        return err(8, BlobProblem::BlockOutOfBounds);
    };
    let strings = &blob[strings];
    let base = st.start;
    let st = &blob[st];
    let tok = |at: usize| word(st, at);
    let name_end = |s: &[u8], at: usize| -> Option<usize> {
        let rest = s.get(at..)?;
        let len = rest.iter().position(|&b| b == 0)?;
        core::str::from_utf8(&rest[..len]).ok()?;
        Some(len)
    };
    let align = |n: usize| n.checked_add(3).map(|n| n & !3);

    let mut at = 0;
    let mut depth = 0usize;
    // After the root's END_NODE only END may follow.
    let mut root_done = false;
    // Properties come before child nodes within a node.
    let mut props_allowed = false;
    loop {
        let Some(t) = tok(at) else {
            return err(base + at, BlobProblem::Truncated);
        };
        match t {
            FDT_BEGIN_NODE => {
                if root_done {
                    return err(base + at, BlobProblem::BadRoot);
                }
                let Some(len) = name_end(st, at + 4) else {
                    return err(base + at + 4, BlobProblem::BadName);
                };
                if (depth == 0) != (len == 0) {
                    return err(base + at + 4, BlobProblem::BadRoot);
                }
                depth += 1;
                if depth > MAX_DEPTH {
                    return err(base + at, BlobProblem::TooDeep);
                }
                at = match align(at + 4 + len + 1) {
                    Some(n) => n,
                    None => return err(base + at, BlobProblem::Truncated),
                };
                props_allowed = true;
            }
            FDT_PROP => {
                if depth == 0 || !props_allowed {
                    return err(base + at, BlobProblem::BadToken);
                }
                let (Some(len), Some(name)) = (tok(at + 4), tok(at + 8)) else {
                    return err(base + at, BlobProblem::Truncated);
                };
                if name_end(strings, name as usize).is_none() {
                    return err(base + at + 8, BlobProblem::BadName);
                }
                let end = (at + 12).checked_add(len as usize);
                match end.filter(|&e| e <= st.len()).and_then(align) {
                    Some(n) => at = n,
                    None => return err(base + at + 4, BlobProblem::BadProperty),
                }
            }
            FDT_END_NODE => {
                if depth == 0 {
                    return err(base + at, BlobProblem::BadToken);
                }
                depth -= 1;
                root_done = depth == 0;
                // A sibling may follow, but no more properties of the
                // parent.
                props_allowed = false;
                at += 4;
            }
            FDT_END => {
                if !root_done {
                    return err(base + at, BlobProblem::BadRoot);
                }
                return Ok(());
            }
            FDT_NOP => return err(base + at, BlobProblem::Nop),
            _ => return err(base + at, BlobProblem::BadToken),
        }
    }
}
