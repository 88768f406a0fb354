//! The Linux `swiotlb=` kernel parameter and the pool geometry it leads to.
//!
//! The grammar is `[nslabs][,nareas][,force|noforce]`, read the way Linux's
//! `setup_io_tlb_npages()` (kernel/dma/swiotlb.c, Linux 6.x with
//! `round_up_default_nslabs()`) reads it:
//!
//! 1. if the value starts with a digit, the slot count is read with
//!    `simple_strtoul(.., 0)` and rounded up to a multiple of
//!    [`IO_TLB_SEGSIZE`], so that no segment is cut short;
//! 2. one `,` is skipped;
//! 3. if a digit follows, the area count is read the same way and handed to
//!    `swiotlb_adjust_nareas()`: zero becomes one, anything else is rounded
//!    up to a power of two, and `round_up_default_nslabs()` then raises the
//!    slot count to one segment per area or, when it is already large
//!    enough, rounds it up to a power of two;
//! 4. one `,` is skipped;
//! 5. what is left must be exactly `force` or `noforce`; anything else is
//!    silently ignored.
//!
//! [`SwiotlbParam::parse`] does exactly that and never fails.
//! [`SwiotlbParam::read`] says how: a [`Reading`] with each number and the
//! base it was read in, the commas Linux skipped, and every [`Finding`]
//! (each adjustment Linux makes, each text it ignores), in order.
//! [`SwiotlbParam::parse_strict`] returns the same value but reports, as an
//! [`Error::BadParam`], the first thing Linux would silently ignore or
//! adjust. [`SwiotlbParam::resolve`] finishes the job the way
//! `swiotlb_init_remap()` does on a machine with a given number of CPUs.
//!
//! # Where this differs from Linux
//!
//! Only where Linux's own result is an arithmetic accident:
//!
//! - Linux wraps a slot count that overflows `unsigned long`; here it
//!   saturates at [`MAX_NSLABS`], the largest count whose byte size fits in
//!   a `u64`, and the strict parser reports [`ParamProblem::Overflow`].
//! - Linux truncates the area count to `unsigned int` and multiplies it by
//!   128 in `unsigned int`, which wraps for 2^25 areas and more; here it
//!   saturates at [`MAX_NAREAS`] and the strict parser reports
//!   [`ParamProblem::Overflow`].
//! - [`SwiotlbParam::resolve`] keeps the area count a power of two where
//!   Linux's `limit_nareas()` may not (see there).

#![forbid(unsafe_code)]

use core::fmt;
use core::str::FromStr;

use crate::error::{Error, ParamProblem, Result};

/// log2 of the slot size (Linux `IO_TLB_SHIFT`).
pub const IO_TLB_SHIFT: u32 = 11;

/// Bytes per slot (Linux `IO_TLB_SIZE`).
pub const IO_TLB_SIZE: usize = 1 << IO_TLB_SHIFT;

/// Slots per segment: no mapping crosses a segment line, so one mapping is
/// at most `IO_TLB_SEGSIZE * IO_TLB_SIZE` bytes (Linux `IO_TLB_SEGSIZE`).
pub const IO_TLB_SEGSIZE: u32 = 128;

/// Bytes in the default pool, 64 MiB (Linux `IO_TLB_DEFAULT_SIZE`).
pub const IO_TLB_DEFAULT_SIZE: u64 = 64 << 20;

/// Slots in the default pool: 64 MiB of 2 KiB slots.
pub const DEFAULT_NSLABS: u64 = IO_TLB_DEFAULT_SIZE >> IO_TLB_SHIFT;

/// The fewest slots Linux falls back to when it cannot allocate the pool it
/// wants: 1 MiB of 2 KiB slots (Linux `IO_TLB_MIN_SLABS`).
pub const IO_TLB_MIN_SLABS: u64 = (1 << 20) >> IO_TLB_SHIFT;

/// The largest slot count this crate accepts: 2^52 slots, 2^63 bytes.
///
/// It is a power of two and a multiple of [`IO_TLB_SEGSIZE`], so every
/// rounding Linux applies to a count at or below it stays at or below it,
/// and the pool's byte size always fits in a `u64`. Linux has no such
/// bound; its arithmetic wraps instead.
pub const MAX_NSLABS: u64 = 1 << (63 - IO_TLB_SHIFT);

/// The largest area count this crate accepts: 2^24.
///
/// Linux computes `nareas * IO_TLB_SEGSIZE` in `unsigned int`
/// (`round_up_default_nslabs()`, `limit_nareas()`), which wraps from 2^25
/// areas on; 2^24 is the largest power of two for which it does not.
pub const MAX_NAREAS: u32 = 1 << 24;

// The values Linux documents, checked at compile time.
const _: () = assert!(IO_TLB_SIZE == 2048);
const _: () = assert!(DEFAULT_NSLABS == 32768);
const _: () = assert!(IO_TLB_MIN_SLABS == 512);
// MAX_NAREAS is the largest power of two whose segments fit in a u32.
const _: () = assert!(MAX_NAREAS.checked_mul(IO_TLB_SEGSIZE).is_some());
const _: () = assert!((MAX_NAREAS * 2).checked_mul(IO_TLB_SEGSIZE).is_none());
const _: () = assert!(MAX_NSLABS % SEG == 0);

/// [`IO_TLB_SEGSIZE`] widened for slot arithmetic.
const SEG: u64 = IO_TLB_SEGSIZE as u64;

/// The prefix [`SwiotlbParam::parse`] accepts in front of the value, so a
/// whole kernel command-line word can be passed.
const PREFIX: &str = "swiotlb=";

/// Whether bounce buffering is forced, left to the DMA masks, or disabled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Force {
    /// No word given: a device bounces only what it cannot reach.
    #[default]
    Default,
    /// `force`: every mapping bounces (Linux `swiotlb_force_bounce`).
    Force,
    /// `noforce`: no pool is set up at all (Linux `swiotlb_force_disable`).
    NoForce,
}

/// A parsed `swiotlb=` value: what `setup_io_tlb_npages()` leaves in
/// Linux's `default_nslabs`, `default_nareas` and force flags.
///
/// [`Display`](fmt::Display) writes the canonical form
/// `[nslabs][,nareas][,force|noforce]`; for every value the parsers return,
/// parsing that text gives the value back. A value built by hand with
/// counts Linux would adjust (a slot count that is not a multiple of 128, an
/// area count that is not a power of two...) comes back adjusted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SwiotlbParam {
    /// The slot count as Linux stores it after steps 1 and 3 (rounded up to
    /// a multiple of 128, possibly raised or rounded up to a power of two by
    /// the area count), or `None` if neither step set it.
    pub nslabs: Option<u64>,
    /// The area count after Linux's rounding (at least 1, a power of two),
    /// or `None` if none was given.
    pub nareas: Option<u32>,
    /// The trailing word.
    pub force: Force,
}

/// The pool geometry Linux ends up with at boot, before any allocation
/// failure makes it shrink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Resolved {
    /// Slots in the pool: a multiple of [`IO_TLB_SEGSIZE`], at least one
    /// segment per area.
    pub nslabs: u64,
    /// Areas (independently locked parts of the pool): a power of two.
    pub nareas: u32,
    /// Bytes in the pool: `nslabs << IO_TLB_SHIFT`.
    pub bytes: u64,
    /// The force setting. With [`Force::NoForce`] Linux sets up no pool at
    /// all; the geometry is still computed so that callers can report it.
    pub force: Force,
}

impl SwiotlbParam {
    /// Parses a `swiotlb=` value exactly as Linux does: never fails, and
    /// whatever Linux ignores is ignored here too.
    ///
    /// An optional leading `swiotlb=` is skipped. Numbers too large for
    /// this crate saturate at [`MAX_NSLABS`] and [`MAX_NAREAS`] (see the
    /// [module documentation](self)).
    pub fn parse(value: &str) -> SwiotlbParam {
        scan(value).param
    }

    /// Reads a `swiotlb=` value as [`parse`](Self::parse) does, and says
    /// how: the numbers and their bases, the commas skipped, and every
    /// adjustment Linux makes and text it ignores, in order.
    pub fn read(value: &str) -> Reading {
        scan(value)
    }

    /// Parses a `swiotlb=` value like [`parse`](Self::parse), but fails on
    /// the first thing Linux would silently ignore or adjust.
    ///
    /// # Errors
    /// [`Error::BadParam`] with `at` the byte offset in the value (after any
    /// `swiotlb=` prefix) and `problem`:
    /// - [`Empty`](ParamProblem::Empty) for an empty value;
    /// - [`Trailing`](ParamProblem::Trailing) for text Linux does not read:
    ///   garbage after a number, an unknown word, a word followed by
    ///   anything, a comma with nothing after it (`at` is where the ignored
    ///   text starts);
    /// - [`Overflow`](ParamProblem::Overflow) for a slot count above
    ///   [`MAX_NSLABS`] or an area count above [`MAX_NAREAS`];
    /// - [`ZeroSlots`](ParamProblem::ZeroSlots) for a slot count of zero;
    /// - [`SlotsRounded`](ParamProblem::SlotsRounded) for a slot count that
    ///   is not a multiple of 128, or, when an area count is given, not a
    ///   power of two (`at` points at the slot count);
    /// - [`ZeroAreas`](ParamProblem::ZeroAreas) for an area count of zero;
    /// - [`AreasRounded`](ParamProblem::AreasRounded) for an area count that
    ///   is not a power of two;
    /// - [`SlotsRaised`](ParamProblem::SlotsRaised) when the area count
    ///   needs more slots than the slot count (or the default) gives (`at`
    ///   points at the area count).
    pub fn parse_strict(value: &str) -> Result<SwiotlbParam> {
        scan(value).strict()
    }

    /// The slot count, or Linux's default of [`DEFAULT_NSLABS`] when none
    /// was set.
    pub fn nslabs_or_default(&self) -> u64 {
        self.nslabs.unwrap_or(DEFAULT_NSLABS)
    }

    /// The geometry `swiotlb_init_remap()` settles on for this parameter on
    /// a machine with `cpus` possible CPUs, assuming the allocation
    /// succeeds.
    ///
    /// With no area count given, Linux calls `swiotlb_adjust_nareas()` with
    /// `num_possible_cpus()`: the CPU count rounded up to a power of two
    /// becomes the area count, and the slot count is raised to one segment
    /// per area or rounded up to a power of two as in step 3 of the
    /// grammar. Then `limit_nareas()` caps the areas at `nslabs / 128`.
    /// Linux's cap can be any number; this one is rounded **down** to a
    /// power of two (at least 1), because the pool needs a power of two.
    /// For values the parsers return the cap never bites, since the slot
    /// count already holds a segment per area; it matters for hand-built
    /// values and mirrors Linux's order of operations.
    ///
    /// With an area count given, Linux's init takes the stored slot count
    /// as it is: the rounding of step 3 happened when the area count was
    /// set. A value parsed from one `swiotlb=` already holds it; a command
    /// line whose slot count comes after its area count
    /// (`swiotlb=,8 swiotlb=1536`, see [`Cmdline`](crate::Cmdline)) keeps
    /// a slot count that is no power of two, or too small for its areas,
    /// and `limit_nareas()` then cuts the areas, as in Linux.
    ///
    /// Fields a parser would not produce are first normalized as Linux's
    /// setters would: the slot count is rounded up to a multiple of 128
    /// (saturating at [`MAX_NSLABS`]), the area count (given or from
    /// `cpus`) is made at least 1, a power of two and at most
    /// [`MAX_NAREAS`]. A stored slot count of zero with an area count
    /// (`swiotlb=,4 swiotlb=0`) leaves Linux trying to allocate an empty
    /// pool, and no pool; here it resolves to one segment.
    pub fn resolve(&self, cpus: u32) -> Resolved {
        let nslabs = align_to_segment(self.nslabs_or_default().min(MAX_NSLABS));
        let (nslabs, nareas) = match self.nareas {
            // Normalizing a given area count is a no-op for parsed values.
            Some(n) => (nslabs.max(SEG), adjust_nareas(u64::from(n))),
            // Without one, swiotlb_init_remap() calls
            // swiotlb_adjust_nareas() with the CPUs, which rounds the slot
            // count as step 3 does.
            None => {
                let nareas = adjust_nareas(u64::from(cpus));
                (round_up_nslabs(nslabs, nareas), nareas)
            }
        };
        let nareas = limit_nareas(nareas, nslabs);
        Resolved {
            nslabs,
            nareas,
            bytes: nslabs << IO_TLB_SHIFT,
            force: self.force,
        }
    }
}

impl fmt::Display for SwiotlbParam {
    /// Writes `[nslabs][,nareas][,force|noforce]`, in decimal. The default
    /// value writes nothing, which [`parse`](Self::parse) reads back but
    /// the strict parser rejects as [`ParamProblem::Empty`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The word needs a comma before it only if a number precedes it:
        // a bare "force" is read by step 5 directly.
        let mut sep = "";
        if let Some(nslabs) = self.nslabs {
            write!(f, "{nslabs}")?;
            sep = ",";
        }
        if let Some(nareas) = self.nareas {
            // The comma is needed even without a slot count: step 3 only
            // reads a number after step 1 or step 2, and without the comma
            // step 1 would take it as the slot count.
            write!(f, ",{nareas}")?;
            sep = ",";
        }
        match self.force {
            Force::Default => Ok(()),
            Force::Force => write!(f, "{sep}force"),
            Force::NoForce => write!(f, "{sep}noforce"),
        }
    }
}

impl FromStr for SwiotlbParam {
    type Err = Error;

    /// The strict parser, [`SwiotlbParam::parse_strict`].
    fn from_str(s: &str) -> Result<Self> {
        Self::parse_strict(s)
    }
}

/// A number of a `swiotlb=` value, as Linux's `simple_strtoul(.., 0)`
/// read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamNumber {
    /// Byte offset of its first character in the value (after any
    /// `swiotlb=` prefix).
    pub at: usize,
    /// Bytes of text it took, the `0x` of a hexadecimal number included.
    pub len: usize,
    /// The base its prefix chose: 16 after `0x` and a hex digit, 8 after
    /// any other leading `0`, 10 otherwise.
    pub radix: u32,
    /// Its value, saturated at `u64::MAX`.
    pub value: u64,
    /// Whether it did not fit in a `u64` (Linux's arithmetic wraps).
    pub overflow: bool,
}

/// Something Linux does to a `swiotlb=` value other than store it as
/// written: an adjustment of a number, or text it does not act on.
/// [`SwiotlbParam::read`] lists them in the order Linux meets them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Finding {
    /// The value is empty: Linux keeps its defaults.
    Empty,
    /// The slot count at `at` is above [`MAX_NSLABS`]; it is taken as
    /// [`MAX_NSLABS`] (Linux's arithmetic would wrap).
    SlotsOverflow {
        /// Byte offset of the slot count.
        at: usize,
    },
    /// A slot count of zero: Linux stores 0 and sizes the pool at boot,
    /// one segment per area.
    SlotsZero {
        /// Byte offset of the slot count.
        at: usize,
    },
    /// The slot count is not a multiple of [`IO_TLB_SEGSIZE`]: Linux rounds
    /// it up to one (`ALIGN(nslabs, IO_TLB_SEGSIZE)`).
    SlotsAligned {
        /// Byte offset of the slot count.
        at: usize,
        /// The count as written.
        from: u64,
        /// The count Linux stores.
        to: u64,
    },
    /// The area count at `at` is above [`MAX_NAREAS`]; it is taken as
    /// [`MAX_NAREAS`] (Linux would truncate it to 32 bits).
    AreasOverflow {
        /// Byte offset of the area count.
        at: usize,
    },
    /// An area count of zero: Linux takes 1.
    AreasZero {
        /// Byte offset of the area count.
        at: usize,
    },
    /// The area count is not a power of two: Linux rounds it up to one.
    AreasRounded {
        /// Byte offset of the area count.
        at: usize,
        /// The count as written.
        from: u32,
        /// The count Linux stores.
        to: u32,
    },
    /// The area count needs more slots than the slot count (or the default)
    /// gives: Linux raises the slot count to one segment per area
    /// (`round_up_default_nslabs()`).
    SlotsRaised {
        /// Byte offset of the area count.
        at: usize,
        /// The slot count before.
        from: u64,
        /// The slot count after: `nareas * 128`.
        to: u64,
        /// The area count, after its own rounding.
        nareas: u32,
    },
    /// With an area count set, a slot count that is not a power of two is
    /// rounded up to one (`round_up_default_nslabs()`).
    SlotsPowerOfTwo {
        /// The slot count before.
        from: u64,
        /// The slot count after.
        to: u64,
        /// The area count.
        nareas: u32,
    },
    /// `count` commas from `at` that Linux skips as separators but that
    /// nothing follows, so they change nothing.
    UnusedCommas {
        /// Byte offset of the first.
        at: usize,
        /// How many: 1 or 2.
        count: usize,
    },
    /// Text Linux does not act on: anything but exactly `force` or
    /// `noforce` where the word may stand, or anything after a NUL byte.
    Ignored {
        /// Byte offset of the text.
        at: usize,
        /// Its length in bytes.
        len: usize,
    },
}

impl Finding {
    /// The strict parser's report of this finding: a byte offset and a
    /// [`ParamProblem`].
    pub fn problem(&self) -> (usize, ParamProblem) {
        match *self {
            Finding::Empty => (0, ParamProblem::Empty),
            Finding::SlotsOverflow { at } | Finding::AreasOverflow { at } => {
                (at, ParamProblem::Overflow)
            }
            Finding::SlotsZero { at } => (at, ParamProblem::ZeroSlots),
            Finding::SlotsAligned { at, .. } => (at, ParamProblem::SlotsRounded),
            Finding::AreasZero { at } => (at, ParamProblem::ZeroAreas),
            Finding::AreasRounded { at, .. } => (at, ParamProblem::AreasRounded),
            Finding::SlotsRaised { at, .. } => (at, ParamProblem::SlotsRaised),
            // Only a slot count from step 1 can be a non-power of two: the
            // default is one, so the slot count is at the start.
            Finding::SlotsPowerOfTwo { .. } => (0, ParamProblem::SlotsRounded),
            Finding::UnusedCommas { at, count } => (at + count - 1, ParamProblem::Trailing),
            Finding::Ignored { at, .. } => (at, ParamProblem::Trailing),
        }
    }
}

/// The most findings one value can have: one for the slot count, two for
/// the area count, one for the word, one for text after a NUL.
const MAX_FINDINGS: usize = 5;

/// How Linux reads one `swiotlb=` value: what it stores, the numbers it
/// read and in which base, the commas it skipped, and every adjustment it
/// makes or text it ignores ([`Finding`]). [`SwiotlbParam::read`] makes
/// one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Reading {
    /// What Linux stores: [`SwiotlbParam::parse`]'s answer.
    pub param: SwiotlbParam,
    /// The slot count as written, if the value starts with a digit.
    pub nslabs: Option<ParamNumber>,
    /// The area count as written, if one follows the slot count and at
    /// most one comma.
    pub nareas: Option<ParamNumber>,
    /// Byte offsets of the commas Linux skips as separators: the one after
    /// the slot count, and the one before the word.
    pub commas: [Option<usize>; 2],
    findings: [Option<Finding>; MAX_FINDINGS],
}

impl Reading {
    /// Every adjustment and ignored text, in the order Linux meets them.
    pub fn findings(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().flatten()
    }

    /// The strict parser's answer: the value, or the first finding as
    /// an error.
    pub(crate) fn strict(&self) -> Result<SwiotlbParam> {
        match self.findings().next().map(Finding::problem) {
            None => Ok(self.param),
            Some((at, problem)) => Err(Error::BadParam { at, problem }),
        }
    }

    /// Records `f` after those found so far.
    fn note(&mut self, f: Finding) {
        // MAX_FINDINGS bounds what one scan can find; a slot is free.
        if let Some(free) = self.findings.iter_mut().find(|f| f.is_none()) {
            *free = Some(f);
        }
    }
}

/// [`scan_value`] of `value` without its `swiotlb=` prefix, if it has one.
fn scan(value: &str) -> Reading {
    scan_value(value.strip_prefix(PREFIX).unwrap_or(value))
}

/// Both parsers in one: the value Linux would store, and everything it
/// would silently ignore or adjust. One pass keeps them from drifting apart.
///
/// `value` is read as Linux hands it to `setup_io_tlb_npages()`, the text
/// after the key: a command line's `swiotlb=swiotlb=...` is a value that
/// starts with `swiotlb=`, which Linux ignores, so no prefix is skipped
/// here.
pub(crate) fn scan_value(value: &str) -> Reading {
    scan_value_onto(value, SwiotlbParam::default())
}

/// [`scan_value`] for a value that follows earlier `swiotlb=` values on
/// the same command line: Linux calls `setup_io_tlb_npages()` once per
/// occurrence, and each call sets only what its value names, on top of
/// what the earlier ones left (`prior`). A slot count replaces the stored
/// one; an area count replaces the stored one and rounds the stored slot
/// count as step 3 does; `force` and `noforce` set two separate flags, of
/// which `noforce` wins (`swiotlb_init_remap()` returns before it looks at
/// `force`), so once either is `NoForce` the merged value stays so.
pub(crate) fn scan_value_onto(value: &str, prior: SwiotlbParam) -> Reading {
    let mut r = Reading {
        param: prior,
        nslabs: None,
        nareas: None,
        commas: [None; 2],
        findings: [None; MAX_FINDINGS],
    };
    let all = value.as_bytes();
    if all.is_empty() {
        r.note(Finding::Empty);
        return r;
    }
    // Linux reads a C string: nothing after a NUL is ever seen.
    let nul = all.iter().position(|&b| b == 0);
    let s = &all[..nul.unwrap_or(all.len())];
    let mut i = 0;

    // Step 1 of setup_io_tlb_npages(): the slot count, rounded up to a whole
    // segment ("avoid tail segment of size < IO_TLB_SEGSIZE").
    if s.first().is_some_and(u8::is_ascii_digit) {
        let num = strtoul(s, 0);
        let mut v = num.value;
        if num.overflow || v > MAX_NSLABS {
            r.note(Finding::SlotsOverflow { at: 0 });
            v = MAX_NSLABS;
        } else if v == 0 {
            // Linux stores 0; the pool is sized at boot (see resolve()).
            r.note(Finding::SlotsZero { at: 0 });
        } else if v % SEG != 0 {
            r.note(Finding::SlotsAligned {
                at: 0,
                from: v,
                to: align_to_segment(v),
            });
        }
        r.param.nslabs = Some(align_to_segment(v));
        r.nslabs = Some(num);
        i = num.at + num.len;
    }

    // Step 2: one separator.
    if s.get(i) == Some(&b',') {
        r.commas[0] = Some(i);
        i += 1;
    }

    // Step 3: the area count, through swiotlb_adjust_nareas(), which takes
    // an `unsigned int` and may change the slot count.
    if s.get(i).is_some_and(u8::is_ascii_digit) {
        let at = i;
        let num = strtoul(s, at);
        let raw = match u32::try_from(num.value) {
            Ok(n) if !num.overflow && n <= MAX_NAREAS => n,
            _ => {
                r.note(Finding::AreasOverflow { at });
                MAX_NAREAS
            }
        };
        let nareas = adjust_nareas(u64::from(raw));
        if raw == 0 {
            r.note(Finding::AreasZero { at });
        } else if nareas != raw {
            r.note(Finding::AreasRounded {
                at,
                from: raw,
                to: nareas,
            });
        }
        // round_up_default_nslabs() works on default_nslabs, which is
        // still Linux's default when step 1 did not set it.
        let before = r.param.nslabs_or_default();
        let after = round_up_nslabs(before, nareas);
        if after != before {
            if before < u64::from(nareas) * SEG {
                r.note(Finding::SlotsRaised {
                    at,
                    from: before,
                    to: after,
                    nareas,
                });
            } else {
                r.note(Finding::SlotsPowerOfTwo {
                    from: before,
                    to: after,
                    nareas,
                });
            }
            r.param.nslabs = Some(after);
        }
        r.param.nareas = Some(nareas);
        r.nareas = Some(num);
        i = num.at + num.len;
    }

    // Step 4: one separator.
    if s.get(i) == Some(&b',') {
        r.commas[1] = Some(i);
        i += 1;
    }

    // Step 5: the rest must be exactly one of the two words (strcmp()).
    match &s[i..] {
        b"force" => {
            if r.param.force != Force::NoForce {
                r.param.force = Force::Force;
            }
        }
        b"noforce" => r.param.force = Force::NoForce,
        b"" => {
            // Commas that nothing follows do nothing in Linux: the last one
            // skipped, and the one before it if nothing stands between.
            let unused: &[usize] = match r.commas {
                [Some(a), Some(b)] if b == a + 1 => &[a, b],
                [_, Some(b)] => &[b],
                [Some(a), None] if a + 1 == i => &[a],
                _ => &[],
            };
            if let Some(&at) = unused.first() {
                r.note(Finding::UnusedCommas {
                    at,
                    count: unused.len(),
                });
            }
        }
        rest => r.note(Finding::Ignored {
            at: i,
            len: rest.len(),
        }),
    }
    if let Some(at) = nul {
        r.note(Finding::Ignored {
            at,
            len: all.len() - at,
        });
    }
    r
}

/// Reads a number at `s[start..]` like Linux's `simple_strtoul(s, &end, 0)`.
///
/// The base follows `_parse_integer_fixup_radix()`: `0x`/`0X` followed by a
/// hex digit is hex, any other leading `0` is octal (the `0` itself is read
/// as a digit, so `"0x"` alone reads 0 and stops at the `x`), anything else
/// is decimal. Reading stops at the first character that is not a digit of
/// the base, as in `_parse_integer()`; it never fails.
pub(crate) fn strtoul(s: &[u8], start: usize) -> ParamNumber {
    let at = |i: usize| s.get(i).copied().unwrap_or(0);
    let (base, mut i) = if at(start) != b'0' {
        (10, start)
    } else if at(start + 1).eq_ignore_ascii_case(&b'x') && at(start + 2).is_ascii_hexdigit() {
        (16, start + 2)
    } else {
        (8, start)
    };
    let mut value = 0u64;
    let mut overflow = false;
    while let Some(d) = char::from(at(i)).to_digit(base) {
        match value
            .checked_mul(u64::from(base))
            .and_then(|v| v.checked_add(u64::from(d)))
        {
            Some(v) => value = v,
            None => {
                overflow = true;
                value = u64::MAX;
            }
        }
        i += 1;
    }
    ParamNumber {
        at: start,
        len: i - start,
        radix: base,
        value,
        overflow,
    }
}

/// Linux's `ALIGN(n, IO_TLB_SEGSIZE)`. `n` must be at most [`MAX_NSLABS`],
/// which is aligned, so the result is too.
fn align_to_segment(n: u64) -> u64 {
    n.next_multiple_of(SEG)
}

/// The area count `swiotlb_adjust_nareas()` stores: 0 becomes 1, anything
/// else is rounded up to a power of two; saturated at [`MAX_NAREAS`].
pub(crate) fn adjust_nareas(n: u64) -> u32 {
    let n = u32::try_from(n.clamp(1, u64::from(MAX_NAREAS))).unwrap_or(MAX_NAREAS);
    // MAX_NAREAS is a power of two, so rounding up cannot pass it.
    n.next_power_of_two()
}

/// Linux's `round_up_default_nslabs()` once an area count is set: at least
/// one segment per area, and a power of two otherwise. `nslabs` must be at
/// most [`MAX_NSLABS`], a power of two, so the result is too.
fn round_up_nslabs(nslabs: u64, nareas: u32) -> u64 {
    let min = u64::from(nareas) * SEG;
    if nslabs < min {
        min
    } else {
        nslabs.next_power_of_two()
    }
}

/// Linux's `limit_nareas()`: no more areas than whole segments, but kept a
/// power of two (rounded down, at least 1), where Linux returns
/// `nslabs / 128` as it is.
pub(crate) fn limit_nareas(nareas: u32, nslabs: u64) -> u32 {
    if nslabs >= u64::from(nareas) * SEG {
        return nareas;
    }
    match nslabs / SEG {
        0 => 1,
        // Below `nareas`, so the shift is below 32.
        segments => 1 << segments.ilog2(),
    }
}

/// The key of our own that sizes the high pool, in front of its value.
const HIGH_PREFIX: &str = "swiotlb.high=";

/// The size of the high pool: `swiotlb.high=<nslabs>`, a key of our own.
///
/// Linux has no high pool. Its RFC ("swiotlb: extra 64-bit buffer for
/// dev->dma_io_tlb_mem", 2022) sized one with a second positional integer,
/// `swiotlb=327680,3145728,force` for 640 MiB low and 6 GiB high; but in
/// Linux's own grammar `[nslabs][,nareas]` the second integer is the area
/// count, so the same text means 3145728 areas to every kernel since 6.2
/// and to [`SwiotlbParam`]. One string must not mean two things, so the
/// `swiotlb=` grammar stays exactly Linux's and the high pool gets its own
/// key, which a Linux kernel ignores (and warns about as unknown) instead of
/// misreading.
///
/// The value is a slot count read as `swiotlb=` reads its first number
/// (decimal, `0x` hex or `0` octal), with no other text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct HighParam {
    /// Slots in the high pool: a non-zero multiple of [`IO_TLB_SEGSIZE`].
    pub nslabs: u64,
}

impl HighParam {
    /// Parses a `swiotlb.high=` value strictly; an optional leading
    /// `swiotlb.high=` is skipped. There is no lenient form: no kernel has
    /// a behaviour of its own to reproduce for this key.
    ///
    /// # Errors
    /// [`Error::BadParam`] with `at` the byte offset in the value and
    /// `problem`:
    /// - [`Empty`](ParamProblem::Empty) for an empty value;
    /// - [`Trailing`](ParamProblem::Trailing) for anything but a number,
    ///   or text after it (a unit suffix, an area count, `force`);
    /// - [`Overflow`](ParamProblem::Overflow) above [`MAX_NSLABS`];
    /// - [`ZeroSlots`](ParamProblem::ZeroSlots) for zero;
    /// - [`SlotsRounded`](ParamProblem::SlotsRounded) for a count that is
    ///   not a multiple of 128, which `swiotlb=` would round up.
    pub fn parse_strict(value: &str) -> Result<HighParam> {
        Self::parse_value(value.strip_prefix(HIGH_PREFIX).unwrap_or(value))
    }

    /// [`HighParam::parse_strict`] of the text after the key, as a command
    /// line gives it: no prefix is skipped.
    pub(crate) fn parse_value(value: &str) -> Result<HighParam> {
        let s = value.as_bytes();
        let bad = |at, problem| Err(Error::BadParam { at, problem });
        if s.is_empty() {
            return bad(0, ParamProblem::Empty);
        }
        if !s[0].is_ascii_digit() {
            return bad(0, ParamProblem::Trailing);
        }
        let num = strtoul(s, 0);
        let end = num.at + num.len;
        if end != s.len() {
            return bad(end, ParamProblem::Trailing);
        }
        if num.overflow || num.value > MAX_NSLABS {
            return bad(0, ParamProblem::Overflow);
        }
        if num.value == 0 {
            return bad(0, ParamProblem::ZeroSlots);
        }
        if num.value % SEG != 0 {
            return bad(0, ParamProblem::SlotsRounded);
        }
        Ok(HighParam { nslabs: num.value })
    }

    /// Bytes in the high pool: `nslabs << IO_TLB_SHIFT`.
    pub fn bytes(&self) -> u64 {
        self.nslabs << IO_TLB_SHIFT
    }
}

impl fmt::Display for HighParam {
    /// Writes the value in decimal, without the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.nslabs)
    }
}

impl FromStr for HighParam {
    type Err = Error;

    /// [`HighParam::parse_strict`].
    fn from_str(s: &str) -> Result<Self> {
        Self::parse_strict(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;
    use std::string::{String, ToString};
    use std::vec::Vec;

    // Short names keep the tables readable.
    const D: Force = Force::Default;
    const F: Force = Force::Force;
    const N: Force = Force::NoForce;

    fn p(nslabs: Option<u64>, nareas: Option<u32>, force: Force) -> SwiotlbParam {
        SwiotlbParam {
            nslabs,
            nareas,
            force,
        }
    }

    fn bad(at: usize, problem: ParamProblem) -> Result<SwiotlbParam> {
        Err(Error::BadParam { at, problem })
    }

    #[test]
    fn constants_are_linuxs() {
        assert_eq!(IO_TLB_SHIFT, 11);
        assert_eq!(IO_TLB_SIZE, 2048);
        assert_eq!(IO_TLB_SEGSIZE, 128);
        assert_eq!(IO_TLB_DEFAULT_SIZE, 64 << 20);
        assert_eq!(DEFAULT_NSLABS, 32768);
        assert_eq!(IO_TLB_MIN_SLABS, 512);
        assert_eq!(MAX_NSLABS << IO_TLB_SHIFT, 1 << 63);
    }

    /// The examples of the brief, through the lenient parser.
    #[test]
    fn linux_examples() {
        let cases: &[(&str, SwiotlbParam)] = &[
            ("65536", p(Some(65536), None, D)),
            // ALIGN(1000, IO_TLB_SEGSIZE).
            ("1000", p(Some(1024), None, D)),
            ("force", p(None, None, F)),
            (",force", p(None, None, F)),
            // Step 2 eats the comma, step 3 sees no digit, step 5 the word.
            ("65536,force", p(Some(65536), None, F)),
            ("0x8000,4", p(Some(32768), Some(4), D)),
            // round_up_default_nslabs(): 4 areas need 512 slots.
            ("128,4", p(Some(512), Some(4), D)),
            ("32768,3,noforce", p(Some(32768), Some(4), N)),
            ("abc", p(None, None, D)),
            ("65536x", p(Some(65536), None, D)),
            // Linux stores 0 and sizes the pool at boot.
            ("0", p(Some(0), None, D)),
            ("noforce", p(None, None, N)),
            (",4", p(None, Some(4), D)),
            (",4,force", p(None, Some(4), F)),
            ("65536,,force", p(Some(65536), None, F)),
            ("", p(None, None, D)),
            ("swiotlb=65536,force", p(Some(65536), None, F)),
        ];
        for (text, want) in cases {
            assert_eq!(SwiotlbParam::parse(text), *want, "{text:?}");
        }
    }

    /// Step 3 when the area count changes the slot count
    /// (`swiotlb_adjust_nareas()` -> `round_up_default_nslabs()`).
    #[test]
    fn area_count_adjusts_slots() {
        // Raised from the default: 512 areas need 65536 slots.
        assert_eq!(
            SwiotlbParam::parse(",512"),
            p(Some(65536), Some(512), Force::Default)
        );
        // The default is large enough and a power of two: left unset.
        assert_eq!(
            SwiotlbParam::parse(",256"),
            p(None, Some(256), Force::Default)
        );
        // Large enough but not a power of two: rounded up to one.
        assert_eq!(
            SwiotlbParam::parse("3072,4"),
            p(Some(4096), Some(4), Force::Default)
        );
        // Zero slots, then areas: raised to one segment per area.
        assert_eq!(
            SwiotlbParam::parse("0,1"),
            p(Some(128), Some(1), Force::Default)
        );
        // Zero areas count as one.
        assert_eq!(
            SwiotlbParam::parse("256,0"),
            p(Some(256), Some(1), Force::Default)
        );
    }

    /// `simple_strtoul(.., 0)` picks the base from the prefix
    /// (`_parse_integer_fixup_radix()`).
    #[test]
    fn base_detection() {
        let slots = |s: &str| SwiotlbParam::parse(s).nslabs;
        assert_eq!(slots("0x8000"), Some(0x8000));
        assert_eq!(slots("0X100"), Some(256));
        assert_eq!(slots("0x1aB80"), Some(0x1ab80));
        // Octal: 010 is 8, rounded up to one segment.
        assert_eq!(slots("010"), Some(128));
        assert_eq!(slots("0400"), Some(256));
        assert_eq!(slots("1024"), Some(1024));
        // "0x" without a hex digit after it: octal "0", stopping at 'x'.
        assert_eq!(SwiotlbParam::parse("0x"), p(Some(0), None, Force::Default));
        assert_eq!(SwiotlbParam::parse("0xg"), p(Some(0), None, Force::Default));
        // '8' is not an octal digit: "08" is slot count 0, then step 3
        // reads 8 areas, which raise the slots to 1024.
        assert_eq!(
            SwiotlbParam::parse("08"),
            p(Some(1024), Some(8), Force::Default)
        );
        // The area count is read the same way.
        assert_eq!(SwiotlbParam::parse(",0x10").nareas, Some(16));
        assert_eq!(SwiotlbParam::parse(",010").nareas, Some(8));
        assert_eq!(
            SwiotlbParam::parse_strict("0x8000,0x4,force"),
            Ok(p(Some(32768), Some(4), Force::Force))
        );
    }

    /// Each problem of the strict parser, and where it points.
    #[test]
    fn strict_problems() {
        use ParamProblem::*;
        let cases: &[(&str, Result<SwiotlbParam>)] = &[
            ("", bad(0, Empty)),
            ("swiotlb=", bad(0, Empty)),
            ("abc", bad(0, Trailing)),
            ("65536x", bad(5, Trailing)),
            ("65536,", bad(5, Trailing)),
            ("65536,4,", bad(7, Trailing)),
            (",", bad(0, Trailing)),
            (",,", bad(1, Trailing)),
            ("force,", bad(0, Trailing)),
            ("65536,4,force,", bad(8, Trailing)),
            ("Force", bad(0, Trailing)),
            ("65536 ", bad(5, Trailing)),
            ("0x", bad(0, ZeroSlots)),
            ("1024x", bad(4, Trailing)),
            ("force\0", bad(5, Trailing)),
            ("18446744073709551616", bad(0, Overflow)),
            ("4503599627370497", bad(0, Overflow)),
            ("1024,99999999999999999999", bad(5, Overflow)),
            ("1024,16777217", bad(5, Overflow)),
            ("0", bad(0, ZeroSlots)),
            ("0,4", bad(0, ZeroSlots)),
            ("1000", bad(0, SlotsRounded)),
            ("010", bad(0, SlotsRounded)),
            ("3072,4", bad(0, SlotsRounded)),
            (",0", bad(1, ZeroAreas)),
            ("32768,3", bad(6, AreasRounded)),
            ("32768,3,noforce", bad(6, AreasRounded)),
            ("128,4", bad(4, SlotsRaised)),
            (",512", bad(1, SlotsRaised)),
            // Offsets count from after the prefix.
            ("swiotlb=1000", bad(0, SlotsRounded)),
            ("swiotlb=65536x", bad(5, Trailing)),
            // The first problem wins.
            ("1000,3,forc", bad(0, SlotsRounded)),
            ("1024,3,forc", bad(5, AreasRounded)),
        ];
        for (text, want) in cases {
            assert_eq!(SwiotlbParam::parse_strict(text), *want, "{text:?}");
        }
    }

    fn findings(text: &str) -> Vec<Finding> {
        SwiotlbParam::read(text).findings().copied().collect()
    }

    /// Every adjustment is listed, not only the first, with its numbers.
    #[test]
    fn read_lists_every_adjustment_in_order() {
        use Finding::*;
        assert_eq!(
            findings("100,3"),
            [
                SlotsAligned {
                    at: 0,
                    from: 100,
                    to: 128
                },
                AreasRounded {
                    at: 4,
                    from: 3,
                    to: 4
                },
                SlotsRaised {
                    at: 4,
                    from: 128,
                    to: 512,
                    nareas: 4
                },
            ]
        );
        assert_eq!(
            findings("3000,3,forc"),
            [
                SlotsAligned {
                    at: 0,
                    from: 3000,
                    to: 3072
                },
                AreasRounded {
                    at: 5,
                    from: 3,
                    to: 4
                },
                SlotsPowerOfTwo {
                    from: 3072,
                    to: 4096,
                    nareas: 4
                },
                Ignored { at: 7, len: 4 },
            ]
        );
        assert_eq!(
            findings("0,0"),
            [
                SlotsZero { at: 0 },
                AreasZero { at: 2 },
                SlotsRaised {
                    at: 2,
                    from: 0,
                    to: 128,
                    nareas: 1
                },
            ]
        );
        assert_eq!(findings("force\0x"), [Ignored { at: 5, len: 2 }]);
        assert_eq!(
            findings("forc\0x"),
            [Ignored { at: 0, len: 4 }, Ignored { at: 4, len: 2 }]
        );
        assert_eq!(findings(""), [Empty]);
        assert!(findings("65536,4,force").is_empty());
        // The strict parser reports the first.
        for text in ["100,3", "3000,3,forc", "0,0", ",,", "65536,", "x"] {
            let (at, problem) = findings(text)[0].problem();
            assert_eq!(
                SwiotlbParam::parse_strict(text),
                Err(Error::BadParam { at, problem }),
                "{text:?}"
            );
        }
    }

    /// The RFC's low-and-high string: the second number is an area count.
    #[test]
    fn read_takes_the_rfc_high_pool_size_as_an_area_count() {
        let r = SwiotlbParam::read("327680,3145728,force");
        assert_eq!(r.param, p(Some(536_870_912), Some(4_194_304), Force::Force));
        assert_eq!(r.nareas.map(|n| n.value), Some(3_145_728));
        assert_eq!(
            r.findings().copied().collect::<Vec<_>>(),
            [
                Finding::AreasRounded {
                    at: 7,
                    from: 3_145_728,
                    to: 4_194_304
                },
                Finding::SlotsRaised {
                    at: 7,
                    from: 327_680,
                    to: 536_870_912,
                    nareas: 4_194_304
                },
            ]
        );
    }

    /// `simple_strtoul(.., 0)`: the base each number was read in, and
    /// where it stopped.
    #[test]
    fn read_says_which_base_each_number_was_read_in() {
        let n = |at, len, radix, value| ParamNumber {
            at,
            len,
            radix,
            value,
            overflow: false,
        };
        let r = SwiotlbParam::read("0x8000,010");
        assert_eq!(r.nslabs, Some(n(0, 6, 16, 0x8000)));
        assert_eq!(r.nareas, Some(n(7, 3, 8, 8)));
        // '8' is not an octal digit: "0" is the slot count, "8" the areas.
        let r = SwiotlbParam::read("08");
        assert_eq!(r.nslabs, Some(n(0, 1, 8, 0)));
        assert_eq!(r.nareas, Some(n(1, 1, 10, 8)));
        assert_eq!(r.commas, [None, None]);
        // "0x" with no hex digit after it: octal 0, then `x` is ignored.
        let r = SwiotlbParam::read("0x");
        assert_eq!(r.nslabs, Some(n(0, 1, 8, 0)));
        assert_eq!(
            r.findings().copied().collect::<Vec<_>>(),
            [
                Finding::SlotsZero { at: 0 },
                Finding::Ignored { at: 1, len: 1 }
            ]
        );
        let r = SwiotlbParam::read("swiotlb=1024");
        assert_eq!(r.nslabs, Some(n(0, 4, 10, 1024)));
        assert!(
            SwiotlbParam::read("99999999999999999999999")
                .nslabs
                .unwrap()
                .overflow
        );
    }

    /// Linux skips one comma after the slot count and one before the word,
    /// no more: which ones it skipped, and which changed nothing.
    #[test]
    fn read_tells_which_commas_linux_skips() {
        let r = SwiotlbParam::read(",,");
        assert_eq!(r.commas, [Some(0), Some(1)]);
        assert_eq!(r.param, SwiotlbParam::default());
        assert_eq!(
            r.findings().copied().collect::<Vec<_>>(),
            [Finding::UnusedCommas { at: 0, count: 2 }]
        );
        // The second comma lets the word be read: nothing to report.
        let r = SwiotlbParam::read("65536,,force");
        assert_eq!(r.commas, [Some(5), Some(6)]);
        assert_eq!(r.param, p(Some(65536), None, Force::Force));
        assert_eq!(r.findings().count(), 0);
        let r = SwiotlbParam::read(",,force");
        assert_eq!(r.param, p(None, None, Force::Force));
        assert_eq!(r.findings().count(), 0);
        // A third comma is one too many: the word is not read.
        let r = SwiotlbParam::read(",,,force");
        assert_eq!(r.commas, [Some(0), Some(1)]);
        assert_eq!(r.param, SwiotlbParam::default());
        assert_eq!(
            r.findings().copied().collect::<Vec<_>>(),
            [Finding::Ignored { at: 2, len: 6 }]
        );
        // An area count after the second comma is not read either.
        let r = SwiotlbParam::read("65536,,4");
        assert_eq!(r.param, p(Some(65536), None, Force::Default));
        assert_eq!(
            r.findings().copied().collect::<Vec<_>>(),
            [Finding::Ignored { at: 7, len: 1 }]
        );
        let unused = |text| {
            SwiotlbParam::read(text)
                .findings()
                .copied()
                .collect::<Vec<_>>()
        };
        assert_eq!(unused(","), [Finding::UnusedCommas { at: 0, count: 1 }]);
        assert_eq!(
            unused("65536,"),
            [Finding::UnusedCommas { at: 5, count: 1 }]
        );
        assert_eq!(
            unused("65536,4,"),
            [Finding::UnusedCommas { at: 7, count: 1 }]
        );
        assert_eq!(
            unused("65536,,"),
            [Finding::UnusedCommas { at: 5, count: 2 }]
        );
        assert!(unused(",4").is_empty());
    }

    /// What the strict parser accepts, it reads as the lenient one does.
    #[test]
    fn strict_accepts_clean_values() {
        let cases: &[(&str, SwiotlbParam)] = &[
            ("65536", p(Some(65536), None, D)),
            ("force", p(None, None, F)),
            ("noforce", p(None, None, N)),
            (",force", p(None, None, F)),
            ("65536,force", p(Some(65536), None, F)),
            ("65536,,force", p(Some(65536), None, F)),
            ("0x8000,4", p(Some(32768), Some(4), D)),
            ("512,4", p(Some(512), Some(4), D)),
            (",4", p(None, Some(4), D)),
            (",256,noforce", p(None, Some(256), N)),
            ("swiotlb=1024,8,force", p(Some(1024), Some(8), F)),
            // Without areas the slot count need not be a power of two.
            ("3072", p(Some(3072), None, D)),
        ];
        for (text, want) in cases {
            assert_eq!(SwiotlbParam::parse_strict(text), Ok(*want), "{text:?}");
            assert_eq!(text.parse::<SwiotlbParam>(), Ok(*want), "{text:?}");
            assert_eq!(SwiotlbParam::parse(text), *want, "{text:?}");
        }
    }

    /// Where Linux's arithmetic would wrap, the lenient parser saturates.
    #[test]
    fn lenient_saturates() {
        assert_eq!(
            SwiotlbParam::parse("99999999999999999999999").nslabs,
            Some(MAX_NSLABS)
        );
        assert_eq!(
            SwiotlbParam::parse("4503599627370497").nslabs,
            Some(MAX_NSLABS)
        );
        assert_eq!(
            SwiotlbParam::parse(",99999999999999999999999,force"),
            p(
                Some(u64::from(MAX_NAREAS) * SEG),
                Some(MAX_NAREAS),
                Force::Force
            )
        );
        // 2^24 + 1 areas would round up to 2^25, past the bound.
        assert_eq!(SwiotlbParam::parse(",16777217").nareas, Some(MAX_NAREAS));
        assert_eq!(SwiotlbParam::parse(",16777216").nareas, Some(MAX_NAREAS));
        // Nothing after a NUL is read, as in C.
        assert_eq!(
            SwiotlbParam::parse("force\0junk"),
            p(None, None, Force::Force)
        );
    }

    #[test]
    fn display_is_canonical() {
        let cases: &[(SwiotlbParam, &str)] = &[
            (p(Some(32768), Some(4), F), "32768,4,force"),
            (p(Some(32768), Some(4), D), "32768,4"),
            (p(Some(65536), None, N), "65536,noforce"),
            (p(Some(65536), None, D), "65536"),
            (p(None, Some(4), D), ",4"),
            (p(None, Some(4), F), ",4,force"),
            (p(None, None, F), "force"),
            (p(None, None, N), "noforce"),
            (p(None, None, D), ""),
            (p(Some(0), None, D), "0"),
        ];
        for (param, want) in cases {
            assert_eq!(param.to_string(), *want);
            assert_eq!(SwiotlbParam::parse(want), *param, "{want:?}");
        }
        // A hex value is written back in decimal.
        assert_eq!(SwiotlbParam::parse("0x8000,4").to_string(), "32768,4");
        // A slot count raised by the area count reads back unchanged.
        let raised = SwiotlbParam::parse("128,4");
        assert_eq!(raised.to_string(), "512,4");
        assert_eq!(SwiotlbParam::parse_strict("512,4"), Ok(raised));
    }

    #[test]
    fn nslabs_default() {
        assert_eq!(SwiotlbParam::default().nslabs_or_default(), DEFAULT_NSLABS);
        assert_eq!(SwiotlbParam::parse("1024").nslabs_or_default(), 1024);
    }

    fn r(nslabs: u64, nareas: u32, force: Force) -> Resolved {
        Resolved {
            nslabs,
            nareas,
            bytes: nslabs << IO_TLB_SHIFT,
            force,
        }
    }

    /// `swiotlb_init_remap()`: without an area count the CPU count is used
    /// (`swiotlb_adjust_nareas(num_possible_cpus())`), then
    /// `limit_nareas()`.
    #[test]
    fn resolve_uses_cpus() {
        let none = SwiotlbParam::default();
        assert_eq!(none.resolve(1), r(32768, 1, D));
        assert_eq!(none.resolve(1).bytes, 64 << 20);
        assert_eq!(none.resolve(2), r(32768, 2, D));
        assert_eq!(none.resolve(3), r(32768, 4, D));
        assert_eq!(none.resolve(64), r(32768, 64, D));
        // 512 CPUs need 65536 slots: round_up_default_nslabs() raises them.
        assert_eq!(none.resolve(512), r(65536, 512, D));
        // num_possible_cpus() is at least 1, but 0 behaves as 1.
        assert_eq!(none.resolve(0), r(32768, 1, D));
        assert_eq!(none.resolve(u32::MAX).nareas, MAX_NAREAS);

        // A given area count wins over the CPUs.
        let given = SwiotlbParam::parse("0x8000,4,force");
        for cpus in [1, 2, 3, 64] {
            assert_eq!(given.resolve(cpus), r(32768, 4, F));
        }
        assert_eq!(SwiotlbParam::parse("128,4").resolve(64), r(512, 4, D));
    }

    /// Small slot counts: the CPU count raises them at boot, because
    /// `swiotlb_adjust_nareas()` runs before `limit_nareas()`.
    #[test]
    fn resolve_small_pools() {
        let small = SwiotlbParam::parse("256");
        assert_eq!(small.resolve(1), r(256, 1, D));
        assert_eq!(small.resolve(2), r(256, 2, D));
        assert_eq!(small.resolve(3), r(512, 4, D));
        assert_eq!(small.resolve(8), r(1024, 8, D));
        // "0" is sized from the CPUs.
        assert_eq!(SwiotlbParam::parse("0").resolve(1), r(128, 1, D));
        assert_eq!(SwiotlbParam::parse("0").resolve(4), r(512, 4, D));
        // Not a power of two: rounded up once areas are set at boot.
        assert_eq!(SwiotlbParam::parse("3072").resolve(1), r(4096, 1, D));
        assert_eq!(
            SwiotlbParam::parse("0x8000,noforce").resolve(2),
            r(32768, 2, N)
        );
    }

    /// Hand-built values are normalized the way Linux's setters would.
    #[test]
    fn resolve_normalizes() {
        let odd = p(Some(1000), Some(3), Force::Default);
        assert_eq!(odd.resolve(1), r(1024, 4, Force::Default));
        let zero = p(Some(100), Some(0), Force::Default);
        assert_eq!(zero.resolve(8), r(128, 1, Force::Default));
        let huge = p(Some(u64::MAX), Some(u32::MAX), Force::Default);
        assert_eq!(huge.resolve(1), r(MAX_NSLABS, MAX_NAREAS, Force::Default));
    }

    /// `limit_nareas()`, with the result kept a power of two.
    #[test]
    fn limit_nareas_rounds_down() {
        assert_eq!(limit_nareas(8, 1024), 8);
        assert_eq!(limit_nareas(8, 4096), 8);
        assert_eq!(limit_nareas(8, 256), 2);
        // Linux would say 3.
        assert_eq!(limit_nareas(8, 384), 2);
        assert_eq!(limit_nareas(8, 896), 4);
        assert_eq!(limit_nareas(8, 128), 1);
        // Linux would say 0.
        assert_eq!(limit_nareas(4, 100), 1);
    }

    #[test]
    fn error_display() {
        let err = SwiotlbParam::parse_strict("65536x").unwrap_err();
        assert_eq!(
            format!("{err}"),
            "swiotlb: the strict swiotlb= check stops at byte 5: text Linux ignores"
        );
    }

    /// The workspace's seeded generator (`rand`'s xoshiro256++), with the
    /// draws this loop makes.
    struct Rng(rand::rngs::Xoshiro256PlusPlus);

    impl Rng {
        fn seeded(seed: u64) -> Self {
            Rng(rand::SeedableRng::seed_from_u64(seed))
        }

        fn next(&mut self) -> u64 {
            rand::Rng::next_u64(&mut self.0)
        }

        fn below(&mut self, n: u64) -> u64 {
            rand::RngExt::random_range(&mut self.0, 0..n)
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            let n = u64::try_from(items.len()).unwrap();
            items[usize::try_from(self.below(n)).unwrap()]
        }

        /// A number in a random base and of a random magnitude.
        fn number(&mut self) -> String {
            let v = match self.below(4) {
                0 => self.below(16),
                1 => self.below(1 << 12),
                2 => 128 << self.below(12),
                _ => self.next(),
            };
            match self.below(3) {
                0 => format!("{v}"),
                1 => format!("0x{v:x}"),
                _ => format!("0{v:o}"),
            }
        }
    }

    /// Every value the parsers return survives Display and parse; the
    /// strict parser agrees with the lenient one whenever it accepts.
    #[test]
    fn round_trip() {
        let mut rng = Rng::seeded(0x9e37_79b9_7f4a_7c15);
        let mut strict_ok = 0;
        for _ in 0..600 {
            let mut text = String::new();
            if rng.below(4) != 0 {
                text.push_str(&rng.number());
            }
            if rng.below(3) != 0 {
                text.push(',');
            }
            if rng.below(2) != 0 {
                text.push_str(&rng.number());
            }
            if rng.below(3) != 0 {
                text.push(',');
            }
            text.push_str(rng.pick(&["", "", "force", "noforce", "forc", "x", " "]));

            let lenient = SwiotlbParam::parse(&text);
            let shown = lenient.to_string();
            assert_eq!(
                SwiotlbParam::parse(&shown),
                lenient,
                "{text:?} -> {shown:?}"
            );
            if let Ok(strict) = SwiotlbParam::parse_strict(&text) {
                strict_ok += 1;
                assert_eq!(strict, lenient, "{text:?}");
                assert_eq!(shown.parse::<SwiotlbParam>(), Ok(strict), "{text:?}");
            }
            // The geometry is always usable.
            let res = lenient.resolve(u32::try_from(rng.below(300)).unwrap());
            assert!(res.nareas.is_power_of_two(), "{text:?}");
            assert_eq!(res.nslabs % SEG, 0, "{text:?}");
            assert!(res.nslabs >= u64::from(res.nareas) * SEG, "{text:?}");
            assert_eq!(res.bytes >> IO_TLB_SHIFT, res.nslabs, "{text:?}");
        }
        // The generator must reach the strict path too.
        assert!(strict_ok > 20, "{strict_ok}");

        // Values built field by field in the normalized form.
        let mut seen = Vec::new();
        for _ in 0..300 {
            let nareas = (rng.below(2) == 0).then(|| 1u32 << rng.below(10));
            let mut nslabs = (rng.below(3) != 0).then(|| 128 * (1 + rng.below(1 << 14)));
            if let (Some(a), Some(s)) = (nareas, nslabs) {
                nslabs = Some(round_up_nslabs(s, a));
            }
            if let (Some(a), None) = (nareas, nslabs) {
                // Unset only if the default needed no change.
                if round_up_nslabs(DEFAULT_NSLABS, a) != DEFAULT_NSLABS {
                    nslabs = Some(round_up_nslabs(DEFAULT_NSLABS, a));
                }
            }
            let force = [Force::Default, Force::Force, Force::NoForce]
                [usize::try_from(rng.below(3)).unwrap()];
            let param = p(nslabs, nareas, force);
            let shown = param.to_string();
            assert_eq!(SwiotlbParam::parse(&shown), param, "{shown:?}");
            if !shown.is_empty() {
                assert_eq!(shown.parse::<SwiotlbParam>(), Ok(param), "{shown:?}");
            }
            seen.push(param);
        }
        assert!(seen
            .iter()
            .any(|q| q.nslabs.is_none() && q.nareas.is_some()));
    }
}
