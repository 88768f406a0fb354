//! The whole kernel command line: `swiotlb=`, our `swiotlb.high=`, and
//! `swiotlb.region=<size>@<address>[,force]`, the default pool at an
//! address the command line gives.
//!
//! A machine with neither a device tree nor ACPI (the x86 MicroVM) is
//! described by its command line alone, its virtio-mmio devices included
//! (`virtio_mmio.device=<size>@<baseaddr>:<irq>`). `swiotlb.region=` places
//! the bounce pool the same way, so that such a guest can share exactly that
//! window with its device process and nothing else.
//!
//! # The `swiotlb.region=` grammar
//!
//! `<size>@<address>[,force]`. Both numbers are read as Linux's `memparse()`
//! reads them (as `memmap=` and `virtio_mmio.device=` are): a number in the
//! base its prefix chooses (`0x` hex, a leading `0` octal, else decimal,
//! as `simple_strtoull(.., 0)`), then at most one suffix `K`, `M`, `G`, `T`,
//! `P` or `E`, in either case, each a factor of 1024 more than the one
//! before. Unlike Linux, whose arithmetic wraps, a number of 2^64 or more
//! is refused, as is a region that ends past 2^64.
//!
//! The pool is made of whole 2 KiB slots: a base or a size that is not a
//! multiple of one is refused by the strict parser, and the lenient one
//! shrinks the region inward (base rounded up, end rounded down) and says
//! so. A region that then holds less than one segment (128 slots), the
//! largest mapping, is refused by both.
//!
//! # The line
//!
//! Words are separated by what Linux's `isspace()` calls a space in the
//! ASCII range (space, `\t`, `\n`, `\v`, `\f`, `\r`; Linux's table also
//! counts the byte 0xA0, which here is part of a UTF-8 character and never
//! a separator), and nothing after a lone `--`
//! is read (Linux hands it to init). Other parameters are ignored. A key
//! given twice is refused by the strict parser, naming both. The lenient
//! one merges repeated `swiotlb=` values as Linux does (its handler runs
//! once per occurrence and sets only what each value names: `swiotlb=65536
//! swiotlb=,4` is 65536 slots in 4 areas, `swiotlb=force swiotlb=noforce`
//! is no pool), and of our own keys, `swiotlb.high=` and
//! `swiotlb.region=`, takes the last; it says so either way. Quoted
//! values (`key="a b"`) are not read: none of these values has
//! a space.
//!
//! # Precedence
//!
//! - `swiotlb.region=` sets the size: a slot count from `swiotlb=` is
//!   ignored (the strict parser refuses it);
//! - the area count of `swiotlb=` applies to the region's pool;
//! - `swiotlb=force` and the region's `force` are one switch: either one
//!   forces every device to bounce through the region;
//! - `swiotlb=noforce` asks for no pool at all, which contradicts a region:
//!   the strict parser refuses the pair, the lenient one keeps the region
//!   and drops `noforce`, and says so;
//! - `swiotlb.high=` stays an independent pool. It has no address on the
//!   command line; the platform refuses a high pool that overlaps the
//!   region when it is added (`Platform::try_with_high`, with the
//!   `alloc` feature).

#![forbid(unsafe_code)]

use crate::config::{
    limit_nareas, scan_value_onto, strtoul, Force, HighParam, Reading, SwiotlbParam,
    IO_TLB_SEGSIZE, IO_TLB_SHIFT, IO_TLB_SIZE,
};
use crate::error::{CmdlineKey, CmdlineProblem, Error, RegionProblem, Result};
use crate::PhysAddr;

/// The key in front of a region value.
const REGION_PREFIX: &str = "swiotlb.region=";

/// Bytes in a slot.
const SLOT: u64 = IO_TLB_SIZE as u64;

/// Bytes in a segment, the smallest region: 128 slots of 2 KiB.
pub const MIN_REGION_SIZE: u64 = SLOT * IO_TLB_SEGSIZE as u64;

/// A number read by Linux's `memparse()`: digits, then an optional unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MemNumber {
    /// Byte offset of its first character in the value.
    pub at: usize,
    /// Bytes of text it took, the `0x` and the suffix included.
    pub len: usize,
    /// The base its prefix chose: 16 after `0x`, 8 after any other leading
    /// `0`, 10 otherwise.
    pub radix: u32,
    /// The unit suffix, as written (`K`, `m`, ...), if any.
    pub suffix: Option<u8>,
    /// Its value in bytes, the suffix applied.
    pub value: u64,
}

/// Reads a `memparse()` number at `s[start..]`, which starts with a digit.
/// `Err(())` if the value reaches 2^64.
fn memparse(s: &[u8], start: usize) -> core::result::Result<MemNumber, ()> {
    let n = strtoul(s, start);
    if n.overflow {
        return Err(());
    }
    let mut len = n.len;
    let mut value = n.value;
    let suffix = s.get(start + len).copied();
    // memparse(): each unit falls through to the next smaller one.
    let shift = match suffix.map(|c| c.to_ascii_uppercase()) {
        Some(b'K') => 10,
        Some(b'M') => 20,
        Some(b'G') => 30,
        Some(b'T') => 40,
        Some(b'P') => 50,
        Some(b'E') => 60,
        _ => 0,
    };
    if shift != 0 {
        if value > u64::MAX >> shift {
            return Err(());
        }
        value <<= shift;
        len += 1;
    }
    Ok(MemNumber {
        at: start,
        len,
        radix: n.radix,
        suffix: if shift != 0 { suffix } else { None },
        value,
    })
}

/// A `swiotlb.region=` value: the default pool's place, in whole slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct RegionParam {
    /// Physical address of the pool: a multiple of the slot size.
    pub base: PhysAddr,
    /// Bytes in the pool: a multiple of the slot size, at least
    /// [`MIN_REGION_SIZE`].
    pub size: u64,
    /// Whether `,force` was given.
    pub force: bool,
}

/// How a `swiotlb.region=` value was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RegionReading {
    /// The region in whole slots.
    pub param: RegionParam,
    /// The size as written.
    pub size: MemNumber,
    /// The address as written.
    pub address: MemNumber,
    /// Whether the region was shrunk to whole slots: then `param` differs
    /// from `size` and `address` as written.
    pub shrunk: bool,
}

impl RegionParam {
    /// Reads a `swiotlb.region=` value leniently (an optional leading
    /// `swiotlb.region=` is skipped): a region not made of whole slots is
    /// shrunk to them, and `shrunk` says so.
    ///
    /// # Errors
    /// [`Error::BadRegion`] with `at` the byte offset in the value (after
    /// any prefix) and each [`RegionProblem`] but
    /// [`Unaligned`](RegionProblem::Unaligned).
    pub fn read(value: &str) -> Result<RegionReading> {
        scan_region(strip(value), false)
    }

    /// The region [`read`](Self::read) gives.
    ///
    /// # Errors
    /// As [`RegionParam::read`].
    pub fn parse(value: &str) -> Result<RegionParam> {
        Self::read(value).map(|r| r.param)
    }

    /// Parses a `swiotlb.region=` value, refusing a base or size that is
    /// not a multiple of the slot size.
    ///
    /// # Errors
    /// As [`RegionParam::read`], and [`RegionProblem::Unaligned`] (`at`
    /// points at the number at fault).
    pub fn parse_strict(value: &str) -> Result<RegionParam> {
        scan_region(strip(value), true).map(|r| r.param)
    }

    /// The first byte past the region; `None` for a region that ends at
    /// exactly 2^64.
    pub fn end(&self) -> Option<PhysAddr> {
        self.base.as_u64().checked_add(self.size).map(PhysAddr)
    }

    /// Slots in the region.
    pub fn nslabs(&self) -> u64 {
        self.size >> IO_TLB_SHIFT
    }
}

fn strip(value: &str) -> &str {
    value.strip_prefix(REGION_PREFIX).unwrap_or(value)
}

/// Both region parsers in one.
fn scan_region(value: &str, strict: bool) -> Result<RegionReading> {
    let s = value.as_bytes();
    let bad = |at, problem| Err(Error::BadRegion { at, problem });
    if !s.first().is_some_and(u8::is_ascii_digit) {
        return bad(0, RegionProblem::Garbage);
    }
    let Ok(size) = memparse(s, 0) else {
        return bad(0, RegionProblem::SizeOverflow);
    };
    let at = size.len;
    if s.get(at) != Some(&b'@') {
        return bad(at, RegionProblem::Garbage);
    }
    if !s.get(at + 1).is_some_and(u8::is_ascii_digit) {
        return bad(at + 1, RegionProblem::Garbage);
    }
    let Ok(address) = memparse(s, at + 1) else {
        return bad(at + 1, RegionProblem::AddressOverflow);
    };
    let end = address.at + address.len;
    let force = match &s[end..] {
        b"" => false,
        b",force" => true,
        _ => return bad(end, RegionProblem::Garbage),
    };
    // In 128 bits, so that a region ending exactly at 2^64 is told from
    // one that runs past it.
    let first = u128::from(address.value);
    let last = first + u128::from(size.value);
    if last > 1u128 << 64 {
        return bad(0, RegionProblem::EndOverflow);
    }
    let slot = u128::from(SLOT);
    let base = first.next_multiple_of(slot);
    let top = last - last % slot;
    let whole = top.saturating_sub(base);
    let shrunk = base != first || top != last;
    if strict && shrunk {
        let at = if base != first { address.at } else { 0 };
        return bad(at, RegionProblem::Unaligned);
    }
    // At most 2^64 - 1 bytes: `top` is at most 2^64 - 2048 once aligned.
    let whole = u64::try_from(whole).unwrap_or(u64::MAX);
    if whole < MIN_REGION_SIZE {
        return bad(
            0,
            RegionProblem::TooSmall {
                size: whole,
                segment: MIN_REGION_SIZE,
            },
        );
    }
    Ok(RegionReading {
        param: RegionParam {
            // Below `top`, so below 2^64.
            base: PhysAddr(u64::try_from(base).unwrap_or(u64::MAX)),
            size: whole,
            force,
        },
        size,
        address,
        shrunk,
    })
}

/// What the three keys of one command line ask for, after the lenient or
/// the strict parse.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Cmdline {
    /// `swiotlb=`, as Linux stores it.
    pub swiotlb: Option<SwiotlbParam>,
    /// `swiotlb.high=`.
    pub high: Option<HighParam>,
    /// `swiotlb.region=`, in whole slots.
    pub region: Option<RegionParam>,
}

/// The pool a command line's region gives (see [`Cmdline::region_pool`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct RegionPool {
    /// Physical address of the first slot.
    pub base: PhysAddr,
    /// Bytes in the pool.
    pub size: u64,
    /// Slots in the pool.
    pub nslabs: u64,
    /// Areas: a power of two, at most one per segment.
    pub nareas: u32,
    /// Whether every device bounces through the pool.
    pub force: bool,
}

impl Cmdline {
    /// Reads a whole command line leniently and says what it did
    /// ([`CmdlineReading::findings`]).
    ///
    /// # Errors
    /// [`Error::BadRegion`] for a region no parser accepts, and
    /// [`Error::BadParam`] for a `swiotlb.high=` value (that key has one
    /// parser, the strict one); offsets count from the start of the line.
    pub fn read(line: &str) -> Result<CmdlineReading> {
        scan_line(line, false)
    }

    /// The keys [`read`](Self::read) gives.
    ///
    /// # Errors
    /// As [`Cmdline::read`].
    pub fn parse(line: &str) -> Result<Cmdline> {
        Self::read(line).map(|r| r.cmdline)
    }

    /// Parses a whole command line, refusing whatever the lenient parse
    /// would adjust or ignore.
    ///
    /// # Errors
    /// As [`Cmdline::read`], and, with offsets in the line:
    /// [`Error::BadCmdline`] for a repeated key, a slot count a region
    /// overrides, or `noforce` with a region; [`Error::BadParam`] for
    /// what [`SwiotlbParam::parse_strict`] refuses; [`Error::BadRegion`]
    /// with [`RegionProblem::Unaligned`].
    pub fn parse_strict(line: &str) -> Result<Cmdline> {
        scan_line(line, true).map(|r| r.cmdline)
    }

    /// Whether every device must bounce: `swiotlb=force`, or a region with
    /// `force`; [`Force::NoForce`] only without a region.
    pub fn force(&self) -> Force {
        let word = self.swiotlb.map_or(Force::Default, |p| p.force);
        match (word, self.region) {
            (Force::Force, _) => Force::Force,
            (_, Some(r)) if r.force => Force::Force,
            (Force::NoForce, None) => Force::NoForce,
            _ => Force::Default,
        }
    }

    /// The pool over the region, if there is one: the area count of
    /// `swiotlb=` if given, else `cpus` rounded up to a power of two, as
    /// Linux does, and in both cases no more than one per segment of the
    /// region.
    pub fn region_pool(&self, cpus: u32) -> Option<RegionPool> {
        let r = self.region?;
        let wanted = self.swiotlb.and_then(|p| p.nareas).unwrap_or(cpus);
        let wanted = crate::config::adjust_nareas(u64::from(wanted));
        let nslabs = r.nslabs();
        Some(RegionPool {
            base: r.base,
            size: r.size,
            nslabs,
            nareas: limit_nareas(wanted, nslabs),
            force: self.force() == Force::Force,
        })
    }
}

/// Something the lenient command-line parser did other than take a key as
/// written (the `swiotlb=` value's own findings are in its [`Reading`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LineFinding {
    /// `swiotlb=` was given `count` times: as Linux does, each value set
    /// what it names on top of the ones before it (a slot count or an area
    /// count replaces the earlier one, the area count rounding the slot
    /// count as it does in one value; `noforce` anywhere wins over
    /// `force`). The reading kept is the last value's, read on top of the
    /// others.
    Merged {
        /// Byte offset of the first occurrence.
        first: usize,
        /// Byte offset of the last one.
        last: usize,
        /// How many there were.
        count: usize,
    },
    /// `key`, one of our own keys, was given more than once: the last one,
    /// at `last`, is taken.
    Repeated {
        /// The key.
        key: CmdlineKey,
        /// Byte offset of the first occurrence.
        first: usize,
        /// Byte offset of the one taken.
        last: usize,
    },
    /// The region was shrunk inward to whole slots.
    RegionShrunk {
        /// Byte offset of the region value.
        at: usize,
        /// The base as written.
        from_base: u64,
        /// The size as written.
        from_size: u64,
    },
    /// The slot count of `swiotlb=` is ignored: the region sets the size.
    SlotsIgnored {
        /// Byte offset of the `swiotlb=` value.
        at: usize,
        /// The slot count as Linux stores it.
        nslabs: u64,
    },
    /// `swiotlb=noforce` is ignored: the region asks for a pool.
    NoForceIgnored {
        /// Byte offset of the `swiotlb=` value.
        at: usize,
    },
}

/// The most findings one line can have: a repeat per key, a shrink, an
/// ignored slot count and an ignored `noforce`.
const MAX_LINE_FINDINGS: usize = 6;

/// How a command line was read: the keys, where each value starts, each
/// value's own reading, and what the lenient parse did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CmdlineReading {
    /// The keys.
    pub cmdline: Cmdline,
    /// The `swiotlb=` value taken: its byte offset in the line and how
    /// Linux reads it.
    pub swiotlb: Option<(usize, Reading)>,
    /// The `swiotlb.region=` value taken: its byte offset in the line and
    /// how it was read.
    pub region: Option<(usize, RegionReading)>,
    findings: [Option<LineFinding>; MAX_LINE_FINDINGS],
}

impl CmdlineReading {
    /// What the lenient parse did, in order: repeats, then the region's
    /// shrink, then how the keys combine.
    pub fn findings(&self) -> impl Iterator<Item = &LineFinding> {
        self.findings.iter().flatten()
    }

    fn note(&mut self, f: LineFinding) {
        if let Some(free) = self.findings.iter_mut().find(|f| f.is_none()) {
            *free = Some(f);
        }
    }
}

/// The first and the last occurrence of a key: the byte offsets of the
/// word and of the value.
#[derive(Clone, Copy)]
struct Seen<'a> {
    first: usize,
    second: Option<usize>,
    last: usize,
    value_at: usize,
    value: &'a str,
}

fn remember<'a>(seen: &mut Option<Seen<'a>>, at: usize, value_at: usize, value: &'a str) {
    match seen {
        None => {
            *seen = Some(Seen {
                first: at,
                second: None,
                last: at,
                value_at,
                value,
            })
        }
        Some(s) => {
            s.second.get_or_insert(at);
            s.last = at;
            s.value_at = value_at;
            s.value = value;
        }
    }
}

/// A separator of the command line's words: Linux's `isspace()` on the
/// ASCII range, which is Rust's ASCII whitespace and the vertical tab.
pub(crate) fn is_space(c: char) -> bool {
    c.is_ascii_whitespace() || c == '\x0b'
}

/// Both line parsers in one.
fn scan_line(line: &str, strict: bool) -> Result<CmdlineReading> {
    let mut keys: [Option<Seen<'_>>; 3] = [None; 3];
    let mut merged: Option<(usize, Reading)> = None;
    let mut swiotlb_count = 0;
    let mut pos = 0;
    for word in line.split(is_space) {
        let at = pos;
        pos += word.len() + 1;
        if word.is_empty() {
            continue;
        }
        if word == "--" {
            break;
        }
        let found = [
            (CmdlineKey::Swiotlb, "swiotlb="),
            (CmdlineKey::High, "swiotlb.high="),
            (CmdlineKey::Region, REGION_PREFIX),
        ]
        .into_iter()
        .enumerate()
        .find_map(|(i, (_, prefix))| word.strip_prefix(prefix).map(|v| (i, prefix.len(), v)));
        match found {
            Some((i, skip, value)) => {
                remember(&mut keys[i], at, at + skip, value);
                if i == 0 {
                    // Each `swiotlb=` on top of the ones before it.
                    let prior = merged.map(|(_, m): (usize, Reading)| m.param);
                    merged = Some((at + skip, scan_value_onto(value, prior.unwrap_or_default())));
                    swiotlb_count += 1;
                }
            }
            // A region key without a value cannot give a region.
            None if word == "swiotlb.region" => remember(&mut keys[2], at, at + word.len(), ""),
            None => {}
        }
    }
    let mut r = CmdlineReading {
        cmdline: Cmdline::default(),
        swiotlb: None,
        region: None,
        findings: [None; MAX_LINE_FINDINGS],
    };
    let names = [CmdlineKey::Swiotlb, CmdlineKey::High, CmdlineKey::Region];
    for (seen, key) in keys.iter().zip(names) {
        let Some(s) = seen else { continue };
        if let Some(second) = s.second {
            if strict {
                return Err(Error::BadCmdline {
                    at: second,
                    problem: CmdlineProblem::Repeated {
                        key,
                        first: s.first,
                    },
                });
            }
            r.note(if key == CmdlineKey::Swiotlb {
                LineFinding::Merged {
                    first: s.first,
                    last: s.last,
                    count: swiotlb_count,
                }
            } else {
                LineFinding::Repeated {
                    key,
                    first: s.first,
                    last: s.last,
                }
            });
        }
    }
    let [swiotlb, high, region] = keys;
    // Each value as Linux hands it to its key's parser: the text after
    // the key, which may itself start with the key (`swiotlb=swiotlb=1`).
    if let (Some(s), Some((value_at, reading))) = (swiotlb, merged) {
        if strict {
            reading.strict().map_err(|e| shift(e, s.value_at))?;
        }
        r.cmdline.swiotlb = Some(reading.param);
        r.swiotlb = Some((value_at, reading));
    }
    if let Some(s) = high {
        r.cmdline.high = Some(HighParam::parse_value(s.value).map_err(|e| shift(e, s.value_at))?);
    }
    if let Some(s) = region {
        let reading = scan_region(s.value, strict).map_err(|e| shift(e, s.value_at))?;
        if reading.shrunk {
            r.note(LineFinding::RegionShrunk {
                at: s.value_at,
                from_base: reading.address.value,
                from_size: reading.size.value,
            });
        }
        r.cmdline.region = Some(reading.param);
        r.region = Some((s.value_at, reading));
    }
    if let (Some((at, reading)), Some(_)) = (r.swiotlb, r.region) {
        let bad = |problem| {
            Err(Error::BadCmdline {
                at: at - "swiotlb=".len(),
                problem,
            })
        };
        if reading.nslabs.is_some() {
            if strict {
                return bad(CmdlineProblem::SlotsOverridden);
            }
            r.note(LineFinding::SlotsIgnored {
                at,
                nslabs: reading.param.nslabs_or_default(),
            });
        }
        if reading.param.force == Force::NoForce {
            if strict {
                return bad(CmdlineProblem::NoForceWithRegion);
            }
            r.note(LineFinding::NoForceIgnored { at });
        }
    }
    Ok(r)
}

/// `e` with its offset moved from a value to the line the value starts at
/// byte `by` of.
fn shift(e: Error, by: usize) -> Error {
    match e {
        Error::BadParam { at, problem } => Error::BadParam {
            at: at + by,
            problem,
        },
        Error::BadRegion { at, problem } => Error::BadRegion {
            at: at + by,
            problem,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests;
