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
//! The blob may come from anywhere. [`parse`] proves the whole structure
//! block well formed, token by token, in the same pass that lists its
//! nodes, and reads nothing that pass did not check. Any malformed blob is
//! [`DtError::BadBlob`], never a panic.
//!
//! # Cost
//!
//! A blob of a few megabytes may hold tens of thousands of pools, devices
//! and `dma-ranges` windows, and it may come from anyone, so no step looks
//! at every pair of anything: the blob is walked once, and the names its
//! properties point to are checked in one pass over the strings block; a
//! property is read in place from its node; the overlap check sorts the
//! pools by base; a phandle is found by binary search in a sorted index;
//! each bus's windows are matched to all of its pools in one pass. Every
//! step costs n · log n at most in the size of the blob plus that of the
//! answer (which holds a device's full path once per pool it uses).
//! `swiotlb bench --only dt` times parses of 3 MiB blobs.

#![forbid(unsafe_code)]

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::addr::PhysAddr;

mod ranges;

/// The `compatible` of a per-device swiotlb pool.
pub const RESTRICTED_DMA_POOL: &str = "restricted-dma-pool";
/// The `compatible` of a coherent-memory or CMA pool.
pub const SHARED_DMA_POOL: &str = "shared-dma-pool";
/// Our own device property: the device's DMA mask width in bits.
pub const DMA_BITS_PROPERTY: &str = "swiotlb,dma-bits";

/// Deepest node nesting accepted, as Linux's `FDT_MAX_DEPTH`
/// (`drivers/of/fdt.c`); it also bounds the names in a path.
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
    Tree::read(blob)?.pools()
}

/// No node: the root's parent; no `dma-ranges` above a node.
const NONE: u32 = u32::MAX;

/// One node of the blob; the name borrows from it.
struct Node<'a> {
    /// The name, unit address included; `/` for the root.
    name: &'a str,
    /// The parent's index, [`NONE`] for the root.
    parent: u32,
    /// Offset in the structure block of the node's first property token,
    /// or of what follows its name when it has none.
    props: u32,
}

/// The nodes of a blob [`Tree::read`] proved well formed, in tree order
/// (every parent before its children, index 0 the root). Properties stay
/// in the blob and are read in place.
struct Tree<'a> {
    nodes: Vec<Node<'a>>,
    /// The structure block.
    st: &'a [u8],
    /// The strings block.
    strings: &'a [u8],
}

impl<'a> Tree<'a> {
    /// Proves the blob well formed and lists its nodes, in one pass over
    /// the structure block: header and blocks in bounds, every token where
    /// the grammar puts it, every name NUL-terminated UTF-8 inside its
    /// block, every property inside the structure block, depth bounded,
    /// exactly one unnamed root. Nothing later reads what this pass did
    /// not check.
    fn read(blob: &'a [u8]) -> Result<Self, DtError<'a>> {
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
        let align = |n: usize| n.checked_add(3).map(|n| n & !3);
        let names = NameStarts::new(strings);

        let mut nodes: Vec<Node<'a>> = Vec::new();
        // The open nodes, innermost last; its length is the depth.
        let mut open: Vec<u32> = Vec::new();
        let mut at = 0;
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
                    let Some(name) = name_at(st, at + 4) else {
                        return err(base + at + 4, BlobProblem::BadName);
                    };
                    if open.is_empty() != name.is_empty() {
                        return err(base + at + 4, BlobProblem::BadRoot);
                    }
                    if open.len() >= MAX_DEPTH {
                        return err(base + at, BlobProblem::TooDeep);
                    }
                    at = match align(at + 4 + name.len() + 1) {
                        Some(n) => n,
                        None => return err(base + at, BlobProblem::Truncated),
                    };
                    // Offsets fit in 32 bits (the header's are 32-bit),
                    // and so does the count of nodes, 8 bytes each at
                    // least.
                    open.push(nodes.len() as u32);
                    nodes.push(Node {
                        name: if open.len() == 1 { "/" } else { name },
                        parent: open.len().checked_sub(2).map_or(NONE, |i| open[i]),
                        props: at as u32,
                    });
                    props_allowed = true;
                }
                FDT_PROP => {
                    if open.is_empty() || !props_allowed {
                        return err(base + at, BlobProblem::BadToken);
                    }
                    let (Some(len), Some(name)) = (tok(at + 4), tok(at + 8)) else {
                        return err(base + at, BlobProblem::Truncated);
                    };
                    if !names.valid(name as usize) {
                        return err(base + at + 8, BlobProblem::BadName);
                    }
                    let end = (at + 12).checked_add(len as usize);
                    match end.filter(|&e| e <= st.len()).and_then(align) {
                        Some(n) => at = n,
                        None => return err(base + at + 4, BlobProblem::BadProperty),
                    }
                }
                FDT_END_NODE => {
                    if open.pop().is_none() {
                        return err(base + at, BlobProblem::BadToken);
                    }
                    root_done = open.is_empty();
                    // A sibling may follow, but no more properties of the
                    // parent.
                    props_allowed = false;
                    at += 4;
                }
                FDT_END => {
                    if !root_done {
                        return err(base + at, BlobProblem::BadRoot);
                    }
                    return Ok(Tree { nodes, st, strings });
                }
                FDT_NOP => return err(base + at, BlobProblem::Nop),
                _ => return err(base + at, BlobProblem::BadToken),
            }
        }
    }

    fn parent(&self, i: usize) -> Option<usize> {
        match self.nodes[i].parent {
            NONE => None,
            p => Some(p as usize),
        }
    }

    /// The node's full path, from its parent's when `parent` holds that
    /// (many devices share a bus), which it then holds for the next call.
    fn path_after(&self, i: usize, parent: &mut Option<(usize, String)>) -> String {
        let Some(p) = self.parent(i) else {
            return String::from("/");
        };
        let pp = match parent {
            Some((q, pp)) if *q == p => pp,
            slot => &slot.insert((p, self.path(p))).1,
        };
        let name = self.nodes[i].name;
        let mut path = String::with_capacity(pp.len() + 1 + name.len());
        // The root's path is the slash its children need.
        if self.parent(p).is_some() {
            path.push_str(pp);
        }
        path.push('/');
        path.push_str(name);
        path
    }

    /// The node's full path: `/` for the root, `/soc/virtio@a000000` below.
    fn path(&self, i: usize) -> String {
        // The names from the node up to the root, which has none in a
        // path; at most MAX_DEPTH of them.
        let mut chain: Vec<&str> = Vec::new();
        let mut at = i;
        while let Some(p) = self.parent(at) {
            chain.push(self.nodes[at].name);
            at = p;
        }
        if chain.is_empty() {
            return String::from("/");
        }
        let mut path = String::with_capacity(chain.iter().map(|n| n.len() + 1).sum());
        for name in chain.iter().rev() {
            path.push('/');
            path.push_str(name);
        }
        path
    }

    /// The value of the node's first property of this name, read in place.
    fn prop(&self, i: usize, name: &str) -> Option<&'a [u8]> {
        // `read` proved every property token of the node in bounds and
        // its name NUL-terminated in the strings block; the checked
        // arithmetic only keeps this free of panics.
        let mut at = self.nodes[i].props as usize;
        while word(self.st, at)? == FDT_PROP {
            let len = word(self.st, at + 4)? as usize;
            let off = word(self.st, at + 8)? as usize;
            let end = (at + 12).checked_add(len)?;
            let n = self.strings.get(off..)?;
            // The first byte alone tells most names apart; the rest only
            // for those it does not.
            if n.first() == name.as_bytes().first()
                && n.starts_with(name.as_bytes())
                && n.get(name.len()) == Some(&0)
            {
                return self.st.get(at + 12..end);
            }
            at = end.checked_add(3)? & !3;
        }
        None
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
        // Node index of each pool, rising, to match memory-region targets.
        let mut pool_nodes: Vec<usize> = Vec::new();
        let rmem = (0..self.nodes.len())
            .find(|&i| self.parent(i) == Some(0) && self.nodes[i].name == "reserved-memory");
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
                if self.parent(i) != Some(rmem) || !self.available(i) {
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
                    path: self.path(i),
                    base: PhysAddr(base),
                    size,
                    kind,
                    devices: Vec::new(),
                });
                pool_nodes.push(i);
            }
        }
        if let Some((a, b)) = first_overlap(&pools) {
            return Err(DtError::Overlap {
                a: pools[a].name,
                b: pools[b].name,
            });
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

    /// Every node with a phandle, as `(phandle, node)` sorted by phandle,
    /// one entry per phandle: the first node in tree order that has it, as
    /// Linux `of_find_node_by_phandle` finds it. `phandle`, or the older
    /// `linux,phandle`.
    fn phandles(&self) -> Vec<(u32, u32)> {
        let mut index = Vec::new();
        for i in 0..self.nodes.len() {
            for name in ["phandle", "linux,phandle"] {
                if let Some(p) = self.prop(i, name).and_then(be32) {
                    index.push((p, i as u32));
                }
            }
        }
        // By phandle, then node: the first of a phandle is its first node.
        index.sort_unstable();
        index.dedup_by_key(|e| e.0);
        index
    }

    /// The `(device, pool)` pairs every available device's
    /// `memory-region` names, in tree order (a device naming one pool
    /// twice gives one pair), up to the first error found here: a bad
    /// `memory-region` or a phandle that names no node. That error comes
    /// beside the pairs before it, which are still checked first.
    fn bindings(&self, pool_nodes: &[usize]) -> (Vec<(u32, u32)>, Option<DtError<'a>>) {
        let phandles = self.phandles();
        let mut pairs = Vec::new();
        // The device that named each pool last.
        let mut last = vec![NONE; pool_nodes.len()];
        for dev in 0..self.nodes.len() {
            let Some(v) = self.prop(dev, "memory-region") else {
                continue;
            };
            if !self.available(dev) {
                continue;
            }
            let device = self.nodes[dev].name;
            if v.is_empty() || v.len() % 4 != 0 {
                let e = DtError::BadProperty {
                    node: device,
                    property: "memory-region",
                };
                return (pairs, Some(e));
            }
            for chunk in v.chunks_exact(4) {
                let phandle = be32(chunk).unwrap_or(0);
                let Ok(at) = phandles.binary_search_by_key(&phandle, |e| e.0) else {
                    return (pairs, Some(DtError::DanglingPhandle { device, phandle }));
                };
                // A memory-region may also name a carve-out a driver uses
                // by hand (firmware, frame buffers); only pools matter.
                let target = phandles[at].1 as usize;
                let Ok(p) = pool_nodes.binary_search(&target) else {
                    continue;
                };
                if last[p] != dev as u32 {
                    last[p] = dev as u32;
                    pairs.push((dev as u32, p as u32));
                }
            }
        }
        (pairs, None)
    }

    /// Binds devices to pools, checking each pair in tree order: its
    /// bus's `dma-ranges`, then the device's DMA mask (see the module's
    /// "Reachability"). Every bus's windows are matched to all of its
    /// pools in one pass first ([`ranges::first_windows`]), so the cost
    /// does not multiply windows by pools.
    fn assign(&self, pools: &mut [DtPool<'a>], pool_nodes: &[usize]) -> Result<(), DtError<'a>> {
        let (pairs, stop) = self.bindings(pool_nodes);
        let holder = self.dma_ranges_holders();
        // The node whose dma-ranges translate for a device: the nearest
        // ancestor that has the property.
        let bus = |dev: u32| self.parent(dev as usize).map_or(NONE, |p| holder[p]);
        let last = |p: u32| pools[p as usize].end() - 1;

        // The device-side address of each pair's last pool byte; `None`
        // when no window holds the pool. No bus: physical addresses.
        let mut dma_last: Vec<Result<Option<u64>, DtError<'a>>> =
            pairs.iter().map(|&(_, p)| Ok(Some(last(p)))).collect();
        let mut by_bus: Vec<u32> = (0..pairs.len() as u32)
            .filter(|&k| bus(pairs[k as usize].0) != NONE)
            .collect();
        let key = |k: u32| (bus(pairs[k as usize].0), pairs[k as usize].1);
        by_bus.sort_unstable_by_key(|&k| key(k));
        for group in by_bus.chunk_by(|&x, &y| key(x).0 == key(y).0) {
            let ranges = match self.dma_ranges(key(group[0]).0 as usize) {
                Ok(Some(r)) => r,
                // An empty dma-ranges: identity, as already filled in.
                Ok(None) => continue,
                Err(e) => {
                    for &k in group {
                        dma_last[k as usize] = Err(e);
                    }
                    continue;
                }
            };
            let per_pool: Vec<&[u32]> = group.chunk_by(|&x, &y| key(x) == key(y)).collect();
            let spans: Vec<(u64, u64)> = per_pool
                .iter()
                .map(|g| {
                    let p = key(g[0]).1;
                    (pools[p as usize].base.0, last(p))
                })
                .collect();
            let found = ranges::first_windows(ranges.windows(), &spans);
            for ((g, w), &(_, l)) in per_pool.iter().zip(found).zip(&spans) {
                let d = match w {
                    Some(w) => w.child.checked_add(l - w.lo).map(Some).ok_or(ranges.bad),
                    None => Ok(None),
                };
                for &k in *g {
                    dma_last[k as usize] = d;
                }
            }
        }

        // The device the pairs are at: a device's pairs are consecutive.
        let mut cur: Option<Device<'a>> = None;
        let mut bus_path = None;
        for (&(dev, p), d) in pairs.iter().zip(dma_last) {
            let device = self.nodes[dev as usize].name;
            let unreachable = DtError::Unreachable {
                device,
                pool: pools[p as usize].name,
            };
            let d = d?.ok_or(unreachable)?;
            let cur = match &mut cur {
                Some(c) if c.node == dev => c,
                c => c.insert(Device {
                    node: dev,
                    bits: self.dma_bits(dev as usize),
                    path: self.path_after(dev as usize, &mut bus_path),
                }),
            };
            if let Some(bits) = cur.bits {
                let bits = bits?;
                if bits < 64 && d >> bits != 0 {
                    return Err(unreachable);
                }
            }
            pools[p as usize].devices.push(cur.path.clone());
        }
        for p in pools.iter_mut() {
            dedup_paths(&mut p.devices);
        }
        stop.map_or(Ok(()), Err)
    }

    /// For every node, the nearest of itself and its ancestors that has a
    /// `dma-ranges`, or [`NONE`]: one look at each node, parents first.
    fn dma_ranges_holders(&self) -> Vec<u32> {
        let mut holder: Vec<u32> = Vec::with_capacity(self.nodes.len());
        for i in 0..self.nodes.len() {
            let h = if self.has(i, "dma-ranges") {
                i as u32
            } else {
                self.parent(i).map_or(NONE, |p| holder[p])
            };
            holder.push(h);
        }
        holder
    }

    /// The device's `swiotlb,dma-bits`, if it has one: a width from 1 to
    /// 64, or the error that names it.
    fn dma_bits(&self, dev: usize) -> Option<Result<u32, DtError<'a>>> {
        let v = self.prop(dev, DMA_BITS_PROPERTY)?;
        Some(
            be32(v)
                .filter(|b| (1..=64).contains(b))
                .ok_or(DtError::BadProperty {
                    node: self.nodes[dev].name,
                    property: DMA_BITS_PROPERTY,
                }),
        )
    }

    /// The `dma-ranges` of bus `b`, checked as a whole; `None` when empty
    /// (identity, Linux `of_dma_get_range` with an empty property).
    fn dma_ranges(&self, b: usize) -> Result<Option<DmaRanges<'a>>, DtError<'a>> {
        let Some(bytes) = self.prop(b, "dma-ranges") else {
            return Ok(None);
        };
        if bytes.is_empty() {
            return Ok(None);
        }
        let bad = DtError::BadProperty {
            node: self.nodes[b].name,
            property: "dma-ranges",
        };
        let child_ac = self.addr_cells(b)? as usize * 4;
        let sc = self.size_cells(b)? as usize * 4;
        let parent_ac = match self.parent(b) {
            Some(p) => self.addr_cells(p)? as usize * 4,
            None => return Err(bad),
        };
        let entry = child_ac + parent_ac + sc;
        // A three-cell parent address does not fit in 64 bits: every
        // entry is bad, so the first is.
        if entry == 0 || bytes.len() % entry != 0 || sc == 0 || parent_ac > 8 {
            return Err(bad);
        }
        Ok(Some(DmaRanges {
            bytes,
            child_ac,
            parent_ac,
            entry,
            bad,
        }))
    }
}

/// What [`Tree::assign`] needs of the device it binds.
struct Device<'a> {
    node: u32,
    /// Its `swiotlb,dma-bits`, read once.
    bits: Option<Result<u32, DtError<'a>>>,
    path: String,
}

/// A bus's `dma-ranges`, its shape checked: whole entries of one, two or
/// three child cells (a three-cell child address is a PCI address: its
/// top cell holds flags, the low two the address), one or two parent
/// cells and one or two size cells.
struct DmaRanges<'a> {
    bytes: &'a [u8],
    child_ac: usize,
    parent_ac: usize,
    entry: usize,
    /// The error that names this property.
    bad: DtError<'a>,
}

impl DmaRanges<'_> {
    /// The windows in property order, those of zero length left out.
    fn windows(&self) -> impl Iterator<Item = ranges::Window> + '_ {
        let (ca, pa) = (self.child_ac, self.parent_ac);
        // The shape checked in `Tree::dma_ranges` makes every `cells`
        // below succeed.
        self.bytes.chunks_exact(self.entry).filter_map(move |e| {
            let child = cells(&e[ca.saturating_sub(8)..ca])?;
            let lo = cells(&e[ca..ca + pa])?;
            let len = cells(&e[ca + pa..])?;
            (len != 0).then(|| ranges::Window {
                lo,
                hi: lo.saturating_add(len - 1),
                child,
            })
        })
    }
}

/// The first two pools in tree order that share memory: the first pool
/// that overlaps any other, and the first pool after it that it overlaps,
/// which is the pair a look at every pair in tree order meets first.
///
/// Sorted by base, a pool overlaps another exactly when the next pool
/// starts before it ends or an earlier one ends after it starts; a sort
/// and one pass find every pool that overlaps any, and one more pass the
/// partner of the first of them.
fn first_overlap(pools: &[DtPool<'_>]) -> Option<(usize, usize)> {
    let mut by_base: Vec<u32> = (0..pools.len() as u32).collect();
    by_base.sort_unstable_by_key(|&i| pools[i as usize].base.0);
    let mut first: Option<usize> = None;
    // The furthest end of the pools before, in base order.
    let mut reach = 0;
    for (k, &i) in by_base.iter().enumerate() {
        let p = &pools[i as usize];
        let next_inside = by_base
            .get(k + 1)
            .is_some_and(|&j| pools[j as usize].base.0 < p.end());
        if reach > p.base.0 || next_inside {
            first = Some(first.map_or(i as usize, |f| f.min(i as usize)));
        }
        reach = reach.max(p.end());
    }
    let a = first?;
    let overlaps = |b: &DtPool<'_>| pools[a].base.0 < b.end() && b.base.0 < pools[a].end();
    let b = a + 1 + pools[a + 1..].iter().position(overlaps)?;
    Some((a, b))
}

/// Leaves the first of equal paths, in order: two nodes may share a path
/// (siblings of one name, a name holding `/`), and a pool lists a path
/// once. Paths are compared by hash first, so the common case, no two
/// alike, costs a hash of each and a sort of integers.
fn dedup_paths(paths: &mut Vec<String>) {
    if paths.len() < 2 {
        return;
    }
    let mut order: Vec<(u64, u32)> = paths
        .iter()
        .enumerate()
        .map(|(i, s)| (hash(s.as_bytes()), i as u32))
        .collect();
    order.sort_unstable();
    let mut drop = Vec::new();
    for run in order.chunk_by_mut(|x, y| x.0 == y.0) {
        if run.len() < 2 {
            continue;
        }
        // Equal hashes: by the path itself, then by position.
        run.sort_unstable_by(|x, y| {
            paths[x.1 as usize]
                .cmp(&paths[y.1 as usize])
                .then(x.1.cmp(&y.1))
        });
        for w in run.windows(2) {
            if paths[w[0].1 as usize] == paths[w[1].1 as usize] {
                drop.push(w[1].1);
            }
        }
    }
    if drop.is_empty() {
        return;
    }
    drop.sort_unstable();
    let mut k = 0;
    let mut i = 0;
    paths.retain(|_| {
        let keep = drop.get(k) != Some(&i);
        if !keep {
            k += 1;
        }
        i += 1;
        keep
    });
}

/// A fast 64-bit hash, eight bytes a step. Not one an adversary cannot
/// collide: [`dedup_paths`] compares the paths of equal hashes, so a
/// collision costs time (a sort of strings), never a wrong answer.
fn hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = (bytes.len() as u64).wrapping_mul(K);
    for chunk in bytes.chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(29);
    }
    h
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

/// The NUL-terminated UTF-8 name at `at` in `s`, without its NUL.
fn name_at(s: &[u8], at: usize) -> Option<&str> {
    let rest = s.get(at..)?;
    let len = rest.iter().position(|&b| b == 0)?;
    core::str::from_utf8(&rest[..len]).ok()
}

/// Which offsets of the strings block start a valid property name: UTF-8
/// up to a NUL inside the block.
///
/// Properties name their names by offset, and many may share one or point
/// into a long one: checking each from its offset would cost properties
/// times the block. One pass from the end decides every offset instead: a
/// name is valid at `i` when `i` holds the NUL, or a whole UTF-8 sequence
/// followed by a valid name.
struct NameStarts {
    bits: Vec<u64>,
    len: usize,
}

impl NameStarts {
    fn new(strings: &[u8]) -> Self {
        let len = strings.len();
        let mut bits = vec![0u64; len.div_ceil(64)];
        let valid = |bits: &[u64], i: usize| i < len && bits[i / 64] >> (i % 64) & 1 != 0;
        for i in (0..len).rev() {
            let ok = match strings[i] {
                0 => true,
                lead => {
                    let width = utf8_width(lead);
                    width != 0
                        && strings
                            .get(i..i + width)
                            .is_some_and(|c| core::str::from_utf8(c).is_ok())
                        && valid(&bits, i + width)
                }
            };
            if ok {
                bits[i / 64] |= 1 << (i % 64);
            }
        }
        Self { bits, len }
    }

    fn valid(&self, i: usize) -> bool {
        i < self.len && self.bits[i / 64] >> (i % 64) & 1 != 0
    }
}

/// The length of the UTF-8 sequence a byte leads, or 0 if it leads none.
fn utf8_width(lead: u8) -> usize {
    match lead {
        0x00..=0x7f => 1,
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => 0,
    }
}
