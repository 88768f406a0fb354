//! `swiotlb explain`: what pool a `swiotlb=` kernel parameter, or a whole
//! kernel command line, gives, and every step Linux takes to get there, in
//! plain words.
//!
//! A whole command line is read with [`Cmdline::read`]: its `swiotlb=`
//! value is explained as a lone one is, and a `swiotlb.region=` (the pool
//! at an address, for a machine described by its command line alone) is
//! shown with its base, end, slots, areas and force setting.
//!
//! The reading is the core's ([`SwiotlbParam::read`], which follows
//! `setup_io_tlb_npages()` in Linux's kernel/dma/swiotlb.c); the boot-time
//! steps are [`SwiotlbParam::resolve`]'s (`swiotlb_init_remap()`). This
//! module only puts them into words.

use std::fmt::Write as _;

use crate::error::Error;
use crate::units::human;
use serde::Serialize;
use swiotlb::cmdline::{Cmdline, LineFinding, MemNumber, RegionPool, RegionReading};
use swiotlb::config::{
    Finding, Force, ParamNumber, Reading, Resolved, SwiotlbParam, IO_TLB_SEGSIZE, IO_TLB_SHIFT,
    MAX_NAREAS, MAX_NSLABS,
};

/// Arguments of `swiotlb explain`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The value, with or without the `swiotlb=` prefix:
    /// `[<nslabs>][,<nareas>][,force|noforce]`, in the kernel's own
    /// grammar: counts (not sizes) in decimal, `0x` hex or `0` octal, no
    /// units. Or a whole kernel command line (as /proc/cmdline), whose
    /// `swiotlb=`, `swiotlb.high=` and `swiotlb.region=<size>@<address>[,force]`
    /// are read and the rest ignored.
    value: String,
    /// Possible CPUs of the machine (Linux uses one area per CPU when no
    /// area count is given). Default: this machine's.
    #[arg(long)]
    cpus: Option<u32>,
    /// Fail (exit code 2) if Linux adjusts or ignores any part of the value
    /// itself; the boot-time steps that depend on the CPU count do not
    /// count.
    #[arg(long)]
    strict: bool,
    /// Print JSON: `nslabs`, `nareas`, `bytes`, `pool`, `force`, `stored`,
    /// `numbers`, `region_base` and `region_size` (null without a region),
    /// and the `adjustments`, `ignored` and `notes` arrays.
    #[arg(long)]
    json: bool,
}

fn force_name(f: Force) -> &'static str {
    match f {
        Force::Default => "default",
        Force::Force => "force",
        Force::NoForce => "noforce",
    }
}

/// Runs `swiotlb explain`.
pub(crate) fn run(args: &Args) -> Result<(), Error> {
    print!("{}", explain(args)?);
    Ok(())
}

/// `swiotlb explain --json`: the pool a value gives and every step, in
/// words.
#[derive(Serialize)]
struct ExplainReport<'a> {
    /// The value as given, without the `swiotlb=` prefix.
    value: &'a str,
    /// Whether Linux sets up a pool (not with `noforce`).
    pool: bool,
    /// Slots, areas and bytes of the pool; 0 without one.
    nslabs: u64,
    nareas: u32,
    bytes: u64,
    /// `default`, `force` or `noforce`.
    force: &'static str,
    slot_size: u64,
    cpus: u32,
    /// The value as Linux stores it; `canonical` is the same, under the
    /// name earlier versions used.
    stored: String,
    canonical: String,
    numbers: Vec<NumberReport<'a>>,
    /// The `swiotlb.region=` pool's physical base and bytes, in whole
    /// slots; null without a region.
    region_base: Option<u64>,
    region_size: Option<u64>,
    adjustments: &'a [String],
    ignored: &'a [String],
    notes: &'a [String],
}

/// One number of the value, as Linux read it.
#[derive(Serialize)]
struct NumberReport<'a> {
    /// `nslabs` or `nareas`.
    field: &'static str,
    /// The digits as given.
    text: &'a str,
    /// Byte offset in the value.
    at: usize,
    /// 8, 10 or 16.
    base: u32,
    value: u64,
}

/// What Linux makes of one value, in words.
struct Explanation {
    /// The value as given, without the `swiotlb=` prefix.
    given: String,
    reading: Reading,
    cpus: u32,
    resolved: Resolved,
    /// Changes Linux makes to the numbers, when it reads the value and at
    /// boot.
    adjustments: Vec<String>,
    /// Text that has no effect.
    ignored: Vec<String>,
    /// How numbers were read, and what the value means beyond its numbers.
    notes: Vec<String>,
    /// How many of `adjustments` come from the value itself (the rest are
    /// boot-time steps that depend on the CPU count).
    value_adjustments: usize,
    /// The `swiotlb.region=` of a whole command line: its value, how it
    /// was read, and the pool it gives.
    region: Option<Region>,
}

/// A command line's `swiotlb.region=`, for the explanation.
struct Region {
    /// The value as given, without the key.
    given: String,
    reading: RegionReading,
    pool: RegionPool,
}

/// Whether `text` is a whole command line rather than a lone `swiotlb=`
/// value: it has a key of ours other than `swiotlb=`, or several words one
/// of which is a `key=value`.
fn is_line(text: &str) -> bool {
    let mut words = text.split_ascii_whitespace();
    let ours = |w: &str| w.starts_with("swiotlb.region") || w.starts_with("swiotlb.high=");
    if text.split_ascii_whitespace().any(ours) {
        return true;
    }
    words.clone().count() > 1 && words.any(|w| w.contains('='))
}

/// `n` in words when its base is not decimal.
fn base_note(text: &str, what: &str, radix: u32, value: u64) -> Option<String> {
    match radix {
        16 => Some(format!(
            "{text} ({what}) is read as hexadecimal, because it starts with 0x: {value}."
        )),
        8 if text.len() > 1 && text.as_bytes()[1].is_ascii_digit() => Some(format!(
            "{text} ({what}) is read as octal, because it starts with 0: {value}."
        )),
        _ => None,
    }
}

impl Explanation {
    /// The explanation of a whole command line.
    fn from_line(line: &str, cpus: u32) -> Result<Explanation, Error> {
        let reading = Cmdline::read(line)?;
        // A value runs from its offset to the next space.
        let word = |at: usize| {
            let end = line[at..]
                .find(|c: char| c.is_ascii_whitespace() || c == '\x0b')
                .map_or(line.len(), |n| at + n);
            &line[at..end]
        };
        let value = reading.swiotlb.map_or("", |(at, _)| word(at));
        let region = reading.region.and_then(|(at, r)| {
            Some(Region {
                given: word(at).to_string(),
                reading: r,
                pool: reading.cmdline.region_pool(cpus)?,
            })
        });
        // The last value, read on top of the ones before it.
        let merged = reading.swiotlb.map(|(_, r)| r);
        let mut e = Explanation::build(value, merged, cpus, region.is_none());
        if reading.swiotlb.is_none() {
            // No swiotlb= at all: nothing of its own to say.
            e.adjustments.clear();
            e.ignored.clear();
            e.notes.clear();
            e.value_adjustments = 0;
            if region.is_none() {
                e.notes.push(
                    "The line has neither swiotlb= nor swiotlb.region=: Linux keeps its \
                     defaults."
                        .into(),
                );
                e.boot_steps();
            }
        }
        e.region = region;
        for f in reading.findings() {
            e.describe_line(*f);
        }
        e.value_adjustments = if e.region.is_some() {
            e.adjustments.len()
        } else {
            e.value_adjustments
        };
        if let Some(high) = reading.cmdline.high {
            e.notes.push(format!(
                "swiotlb.high={high} asks for a high pool of {} next to the default one; it has \
                 no address on the command line, and must not overlap the region.",
                human(high.bytes())
            ));
        }
        e.region_notes();
        Ok(e)
    }

    fn new(value: &str, cpus: u32) -> Explanation {
        Self::build(value, None, cpus, true)
    }

    /// The explanation of a `swiotlb=` value (read alone, or `merged`: as
    /// the line's reader read it on top of earlier values); with `boot`,
    /// the boot-time steps and what the value means (not when a region
    /// sets the pool).
    fn build(value: &str, merged: Option<Reading>, cpus: u32, boot: bool) -> Explanation {
        let given = value.strip_prefix("swiotlb=").unwrap_or(value).to_string();
        let reading = merged.unwrap_or_else(|| SwiotlbParam::read(&given));
        let mut e = Explanation {
            resolved: reading.param.resolve(cpus),
            given,
            reading,
            cpus,
            adjustments: Vec::new(),
            ignored: Vec::new(),
            notes: Vec::new(),
            value_adjustments: 0,
            region: None,
        };
        e.number_notes();
        let findings: Vec<Finding> = e.reading.findings().copied().collect();
        for f in findings {
            e.describe(f);
        }
        e.value_adjustments = e.adjustments.len();
        if boot {
            e.boot_steps();
            e.meaning_notes();
        }
        e
    }

    /// One finding of the line reader, in words.
    fn describe_line(&mut self, f: LineFinding) {
        match f {
            LineFinding::Merged { first, last, count } => self.adjustments.push(format!(
                "swiotlb= is given {count} times (bytes {first} to {last}): Linux reads each in \
                 turn, and each sets only what it names on top of the ones before (a later \
                 number replaces an earlier one; noforce anywhere means no pool). The reading \
                 below is the last value's, on top of the others."
            )),
            LineFinding::Repeated { key, first, last } => self.ignored.push(format!(
                "{key} is given more than once (first at byte {first}): the last, at byte \
                 {last}, is taken and the others are ignored."
            )),
            LineFinding::RegionShrunk {
                from_base,
                from_size,
                ..
            } => {
                let (base, size) = self
                    .region
                    .as_ref()
                    .map_or((0, 0), |r| (r.pool.base.0, r.pool.size));
                self.adjustments.push(format!(
                    "The region {from_size:#x} bytes at {from_base:#x} is not made of whole \
                     {}-byte slots: it is shrunk inward to {size:#x} bytes at {base:#x}.",
                    1u64 << IO_TLB_SHIFT
                ));
            }
            LineFinding::SlotsIgnored { nslabs, .. } => self.ignored.push(format!(
                "The slot count of swiotlb= ({nslabs} slots) is ignored: swiotlb.region= sets \
                 the size of the pool."
            )),
            LineFinding::NoForceIgnored { .. } => self.ignored.push(
                "swiotlb=noforce asks for no pool, but swiotlb.region= asks for one: the \
                 region is set up and noforce is ignored."
                    .into(),
            ),
            other => self.ignored.push(format!("{other:?}")),
        }
    }

    /// How the region's numbers were read, and what the region means.
    fn region_notes(&mut self) {
        let Some(r) = &self.region else { return };
        let text = |n: &MemNumber| r.given.get(n.at..n.at + n.len).unwrap_or("").to_string();
        let mut notes = Vec::new();
        for (n, what) in [
            (&r.reading.size, "the region's size"),
            (&r.reading.address, "the region's address"),
        ] {
            let t = text(n);
            let digits = t.trim_end_matches(|c: char| c.is_ascii_alphabetic() && c != 'x');
            if let Some(note) = base_note(&format!("`{t}`"), what, n.radix, n.value) {
                if n.radix != 8 || digits.len() > 1 {
                    notes.push(note);
                }
            }
        }
        if !r.pool.force && self.reading.param.force != Force::Force {
            notes.push(
                "Without force, only buffers a device cannot reach bounce through the region. \
                 A device VM whose devices see only this window needs force: nothing else \
                 tells the platform that the rest of memory is out of their reach."
                    .into(),
            );
        }
        self.notes.extend(notes);
    }

    /// Whether Linux sets up a pool for this value at all.
    fn has_pool(&self) -> bool {
        self.reading.param.force != Force::NoForce
    }

    /// `len` bytes of the value from `at`, quoted; control characters
    /// (a NUL) escaped.
    fn quote(&self, at: usize, len: usize) -> String {
        let text = self.given.get(at..at + len).unwrap_or("");
        format!("`{}`", text.escape_debug())
    }

    fn number_text(&self, n: &ParamNumber) -> String {
        self.quote(n.at, n.len)
    }

    /// Says which numbers were read as octal or hexadecimal, and where an
    /// octal number stopped at an 8 or a 9.
    fn number_notes(&mut self) {
        let numbers = [
            (self.reading.nslabs, "the slot count"),
            (self.reading.nareas, "the area count"),
        ];
        for (n, what) in numbers {
            let Some(n) = n else { continue };
            let text = self.number_text(&n);
            let next = self.given.as_bytes().get(n.at + n.len).copied();
            match n.radix {
                16 => self.notes.push(format!(
                    "Linux reads {text} ({what}) as hexadecimal, because it starts with 0x: {}.",
                    n.value
                )),
                8 if matches!(next, Some(b'8' | b'9')) => self.notes.push(format!(
                    "Linux reads {text} ({what}) as octal, because it starts with 0, and stops \
                     before `{}`, which is not an octal digit: {}.",
                    char::from(next.unwrap_or(b'8')),
                    n.value
                )),
                8 if n.len > 1 => self.notes.push(format!(
                    "Linux reads {text} ({what}) as octal, because it starts with 0: {}.",
                    n.value
                )),
                _ => {}
            }
        }
    }

    /// One finding of the reader, in words.
    fn describe(&mut self, f: Finding) {
        let slots_given = self.reading.nslabs.is_some();
        match f {
            Finding::Empty => self
                .ignored
                .push("The value is empty: Linux keeps its defaults.".into()),
            Finding::SlotsOverflow { at } => {
                let text = self
                    .reading
                    .nslabs
                    .map_or(String::new(), |n| self.number_text(&n));
                self.adjustments.push(format!(
                    "The slot count {text} at byte {at} does not fit in 64 bits; Linux's \
                     arithmetic would wrap it around, and this tool takes the largest count it \
                     models, {MAX_NSLABS} slots."
                ));
            }
            Finding::SlotsZero { .. } => self.adjustments.push(
                "A slot count of 0 leaves the size to the area count (one segment per area)."
                    .into(),
            ),
            Finding::SlotsAligned { from, to, .. } => self.adjustments.push(format!(
                "Linux rounds {from} slots up to {to}, a whole number of {IO_TLB_SEGSIZE}-slot \
                 segments."
            )),
            Finding::AreasOverflow { at } => {
                let text = self
                    .reading
                    .nareas
                    .map_or(String::new(), |n| self.number_text(&n));
                self.adjustments.push(format!(
                    "The area count {text} at byte {at} is more than this tool models; it takes \
                     {MAX_NAREAS} areas (Linux would first cut the number to 32 bits)."
                ));
            }
            Finding::AreasZero { .. } => self
                .adjustments
                .push("Linux takes an area count of 0 as 1.".into()),
            Finding::AreasRounded { from, to, .. } => self.adjustments.push(format!(
                "Linux rounds {from} areas up to {to}, a power of two."
            )),
            Finding::SlotsRaised {
                from, to, nareas, ..
            } => {
                let from = if slots_given {
                    format!("{from} slots")
                } else {
                    format!("the default {from} slots")
                };
                self.adjustments.push(format!(
                    "Linux raises {from} to {to}, so that each of the {nareas} areas holds a \
                     {IO_TLB_SEGSIZE}-slot segment."
                ));
            }
            Finding::SlotsPowerOfTwo { from, to, .. } => self.adjustments.push(format!(
                "Linux rounds {from} slots up to {to}, a power of two, as it does whenever an \
                 area count is set."
            )),
            Finding::UnusedCommas { at, count } => self.ignored.push(if count == 1 {
                let role = if self.reading.commas[1] == Some(at) {
                    "the one before `force` or `noforce`"
                } else {
                    "the one after the slot count"
                };
                format!(
                    "The comma at byte {at} changes nothing: Linux skips it as a separator \
                     ({role}), and nothing follows it."
                )
            } else {
                format!(
                    "The commas at bytes {at} and {} change nothing: Linux skips the first as \
                     the separator after the slot count and the second as the one before \
                     `force` or `noforce`, and nothing follows them.",
                    at + 1
                )
            }),
            Finding::Ignored { at, len } => {
                let why = self.why_ignored(at, len);
                let text = self.quote(at, len);
                self.ignored
                    .push(format!("Linux ignores {text} at byte {at}: {why}."));
            }
            // A finding this version does not know yet: say it plainly.
            other => {
                let (at, problem) = other.problem();
                self.adjustments.push(format!("At byte {at}: {problem}."));
            }
        }
    }

    /// Why Linux does not act on `len` bytes at `at`.
    fn why_ignored(&self, at: usize, len: usize) -> String {
        let text = self.given.get(at..at + len).unwrap_or("");
        let first = text.as_bytes().first().copied().unwrap_or(0);
        // The number, if any, that ends right where the ignored text starts.
        let number_before = [self.reading.nslabs, self.reading.nareas]
            .into_iter()
            .flatten()
            .find(|n| n.at + n.len == at);
        let word_only = "after the numbers, and at most one comma after the slot count and one \
                         before the word, Linux reads only `force` or `noforce`, exactly";
        if first == 0 {
            return "it comes after a NUL byte, where Linux's string ends".into();
        }
        if first == b',' {
            return format!(
                "one comma too many: Linux skips one comma after the slot count and one before \
                 the word, no more; {word_only}"
            );
        }
        if matches!(first, b'x' | b'X') && number_before.is_some_and(|n| n.value == 0 && n.len == 1)
        {
            return "`0x` needs a hexadecimal digit after it; without one Linux reads the `0` \
                    alone, as octal"
                .into();
        }
        if number_before.is_some() && b"kKmMgGtT".contains(&first) {
            return "the numbers are counts of 2 KiB slots and of areas, with no unit suffix: \
                    Linux stops reading the number before it"
                .into();
        }
        if first.is_ascii_digit() {
            return format!(
                "an area count must follow the first comma directly, and a number here is not \
                 read; {word_only}"
            );
        }
        let lower = text.to_ascii_lowercase();
        let mut why = word_only.to_string();
        // A misspelt word, in any case: say what it does not do.
        if lower.contains("nofor") {
            why.push_str(", so `noforce` does not take effect");
        } else if lower.contains("forc") {
            why.push_str(", so bounce buffering is not forced");
        }
        if text.contains(char::is_whitespace) {
            why.push_str(" (Linux does not skip spaces)");
        }
        why
    }

    /// What `swiotlb_init_remap()` does at boot on top of the value: areas
    /// from the CPU count, and the slot count raised or rounded to suit
    /// them. None of it happens with `noforce`, which returns first.
    fn boot_steps(&mut self) {
        if !self.has_pool() {
            return;
        }
        let param = self.reading.param;
        let r = self.resolved;
        let wanted = match param.nareas {
            Some(n) => n,
            None => {
                let n = self.cpus.clamp(1, MAX_NAREAS).next_power_of_two();
                if n != self.cpus {
                    self.adjustments.push(format!(
                        "With no area count given, Linux uses one area per possible CPU, \
                         rounded up to a power of two: {} CPUs give {n} areas.",
                        self.cpus
                    ));
                }
                n
            }
        };
        let before = param.nslabs_or_default();
        if r.nslabs != before {
            let from = if param.nslabs.is_some() {
                format!("{before} slots")
            } else {
                format!("the default {before} slots")
            };
            self.adjustments
                .push(if before < u64::from(wanted) * u64::from(IO_TLB_SEGSIZE) {
                    format!(
                        "At boot Linux raises {from} to {}, so that each of the {wanted} areas \
                         holds a {IO_TLB_SEGSIZE}-slot segment.",
                        r.nslabs
                    )
                } else {
                    format!(
                        "At boot Linux rounds {from} up to {}, a power of two, once the area \
                         count is set.",
                        r.nslabs
                    )
                });
        }
        if r.nareas < wanted {
            self.adjustments.push(format!(
                "Linux lowers the area count from {wanted} to {}, the whole segments the pool \
                 holds.",
                r.nareas
            ));
        }
    }

    /// What the value means beyond its numbers: no pool, nothing set, and
    /// the high-pool string of the RFC.
    fn meaning_notes(&mut self) {
        let param = self.reading.param;
        if !self.given.is_empty() && param == SwiotlbParam::default() {
            self.notes
                .push("This value sets nothing: Linux keeps all its defaults.".into());
        }
        if !self.has_pool() && (param.nslabs.is_some() || param.nareas.is_some()) {
            self.notes.push(
                "With noforce Linux sets up no pool, so the slot and area counts are stored \
                 but unused."
                    .into(),
            );
        }
        // Linux's grammar has one pool; a second number that looks like a
        // slot count (whole segments, at least as many as the first) is
        // the high-pool size of the RFC, misread as areas.
        if let Some(areas) = self.reading.nareas {
            let slots = self
                .reading
                .nslabs
                .map_or(param.nslabs_or_default(), |n| n.value);
            let seg = u64::from(IO_TLB_SEGSIZE);
            if areas.value >= slots.max(seg) && areas.value % seg == 0 && !areas.overflow {
                self.notes.push(self.rfc_note(areas));
            }
        }
        // swiotlb_init_remap() halves a pool it cannot allocate.
        if self.has_pool() && self.resolved.bytes >= 4 << 30 {
            self.notes.push(format!(
                "Linux allocates the pool at boot; if it cannot get {}, it halves the slot \
                 count until an allocation succeeds (giving up at 1 MiB), so the pool you get \
                 depends on the machine.",
                human(self.resolved.bytes)
            ));
        }
    }

    /// The note for `[nslabs],<high nslabs>[,force]`, the form a 2022 RFC
    /// for Linux proposed for a low and a 64-bit pool.
    fn rfc_note(&self, areas: ParamNumber) -> String {
        let seg = u64::from(IO_TLB_SEGSIZE);
        let low = SwiotlbParam {
            nslabs: self.reading.nslabs.map(|n| n.value.next_multiple_of(seg)),
            nareas: None,
            force: self.reading.param.force,
        };
        let high = areas.value.next_multiple_of(seg);
        let low_text = low.to_string();
        let suggestion = if low_text.is_empty() {
            format!("swiotlb.high={high}")
        } else {
            format!("swiotlb={low_text} swiotlb.high={high}")
        };
        format!(
            "{} is read as the area count, not as the size of a second pool: Linux has one \
             default pool, and the second number of swiotlb= is always its area count. A 2022 \
             RFC for Linux (\"swiotlb: extra 64-bit buffer\") wrote a low and a 64-bit pool this \
             way; no kernel reads it so. If that is what you meant, a {} pool of {high} slots \
             next to this one: this project sizes its high pool with a key of its own, \
             `{suggestion}` (config::HighParam), which Linux ignores instead of misreading.",
            self.number_text(&areas),
            human(high << IO_TLB_SHIFT),
        )
    }

    fn report(&self) -> ExplainReport<'_> {
        let r = self.resolved;
        let pool = self.has_pool();
        let numbers = [
            (self.reading.nslabs, "nslabs"),
            (self.reading.nareas, "nareas"),
        ]
        .into_iter()
        .filter_map(|(n, field)| {
            n.map(|n| NumberReport {
                field,
                text: self.given.get(n.at..n.at + n.len).unwrap_or(""),
                at: n.at,
                base: n.radix,
                value: n.value,
            })
        })
        .collect();
        if let Some(region) = &self.region {
            let p = region.pool;
            return ExplainReport {
                value: &self.given,
                pool: true,
                nslabs: p.nslabs,
                nareas: p.nareas,
                bytes: p.size,
                force: if p.force { "force" } else { "default" },
                slot_size: 1u64 << IO_TLB_SHIFT,
                cpus: self.cpus,
                stored: self.reading.param.to_string(),
                canonical: self.reading.param.to_string(),
                numbers,
                region_base: Some(p.base.0),
                region_size: Some(p.size),
                adjustments: &self.adjustments,
                ignored: &self.ignored,
                notes: &self.notes,
            };
        }
        ExplainReport {
            value: &self.given,
            pool,
            nslabs: if pool { r.nslabs } else { 0 },
            nareas: if pool { r.nareas } else { 0 },
            bytes: if pool { r.bytes } else { 0 },
            force: force_name(r.force),
            slot_size: 1u64 << IO_TLB_SHIFT,
            cpus: self.cpus,
            stored: self.reading.param.to_string(),
            canonical: self.reading.param.to_string(),
            numbers,
            region_base: None,
            region_size: None,
            adjustments: &self.adjustments,
            ignored: &self.ignored,
            notes: &self.notes,
        }
    }

    /// The region's part of the text.
    fn region_text(&self, out: &mut String, region: &Region) {
        let p = region.pool;
        let end = u128::from(p.base.0) + u128::from(p.size);
        if !self.given.is_empty() {
            let _ = writeln!(out, "swiotlb={}", self.given.escape_debug());
        }
        let _ = writeln!(out, "swiotlb.region={}", region.given.escape_debug());
        let _ = writeln!(
            out,
            "  region:  {:#x}..{end:#x} ({}, {} bytes)",
            p.base.0,
            human(p.size),
            p.size
        );
        let _ = writeln!(out, "  base:    {:#x}", p.base.0);
        let _ = writeln!(out, "  end:     {end:#x}");
        let _ = writeln!(
            out,
            "  slots:   {} of {} bytes",
            p.nslabs,
            1u64 << IO_TLB_SHIFT
        );
        let area_src = if self.reading.param.nareas.is_some() {
            "from swiotlb=".to_string()
        } else {
            format!("one per CPU, {} CPUs", self.cpus)
        };
        let _ = writeln!(
            out,
            "  areas:   {} ({area_src}), {} slots each",
            p.nareas,
            p.nslabs / u64::from(p.nareas)
        );
        let mode = if p.force {
            "force: every device bounces through the region"
        } else {
            "bounce only what a device cannot reach, through the region"
        };
        let _ = writeln!(out, "  force:   {}", if p.force { "yes" } else { "no" });
        let _ = writeln!(out, "  mode:    {mode}");
    }

    fn to_text(&self) -> String {
        let r = self.resolved;
        let param = self.reading.param;
        let mut out = String::new();
        if let Some(region) = &self.region {
            self.region_text(&mut out, region);
            self.findings_text(&mut out);
            return out;
        }
        // Writing to a String cannot fail.
        let _ = writeln!(out, "swiotlb={}", self.given.escape_debug());
        if param == SwiotlbParam::default() {
            let _ = writeln!(out, "  stored:  nothing (Linux's defaults)");
        } else {
            let _ = writeln!(out, "  stored:  swiotlb={param}");
        }
        if self.has_pool() {
            let _ = writeln!(out, "  pool:    {} ({} bytes)", human(r.bytes), r.bytes);
            let _ = writeln!(
                out,
                "  slots:   {} of {} bytes",
                r.nslabs,
                1u64 << IO_TLB_SHIFT
            );
            let area_src = if param.nareas.is_some() {
                "given".to_string()
            } else {
                format!("one per CPU, {} CPUs", self.cpus)
            };
            let _ = writeln!(
                out,
                "  areas:   {} ({area_src}), {} slots each",
                r.nareas,
                r.nslabs / u64::from(r.nareas)
            );
        } else {
            let _ = writeln!(out, "  pool:    none");
        }
        let mode = match r.force {
            Force::Default => {
                "bounce only what a device cannot reach; Linux sets the pool up at boot only \
                 if the machine needs one (memory beyond a device's reach, a confidential VM)"
            }
            Force::Force => "force: every mapping bounces",
            Force::NoForce => {
                "noforce: no bounce pool is set up, and a buffer a device cannot reach fails \
                 to map instead of bouncing (on the direct path, without an IOMMU)"
            }
        };
        let _ = writeln!(out, "  mode:    {mode}");
        self.findings_text(&mut out);
        out
    }

    /// The adjustments, ignored text and notes, one line each.
    fn findings_text(&self, out: &mut String) {
        for (label, lines) in [
            ("adjusts:", &self.adjustments),
            ("ignores:", &self.ignored),
            ("note:", &self.notes),
        ] {
            for (i, line) in lines.iter().enumerate() {
                let label = if i == 0 { label } else { "" };
                let _ = writeln!(out, "  {label:<8} {line}");
            }
        }
    }
}

fn explain(args: &Args) -> Result<String, Error> {
    let cpus = args.cpus.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1)
    });
    if cpus == 0 {
        return Err(Error::BadArgument {
            arg: "--cpus",
            why: "must be at least 1".into(),
        });
    }
    let line = is_line(&args.value);
    let e = if line {
        Explanation::from_line(&args.value, cpus)?
    } else {
        Explanation::new(&args.value, cpus)
    };
    if args.strict {
        let changes: Vec<String> = e.adjustments[..e.value_adjustments]
            .iter()
            .chain(&e.ignored)
            .cloned()
            .collect();
        if !changes.is_empty() {
            return Err(Error::Strict {
                value: if line { args.value.clone() } else { e.given },
                changes,
            });
        }
    }
    if args.json {
        let mut out = serde_json::to_string(&e.report())?;
        out.push('\n');
        return Ok(out);
    }
    Ok(e.to_text())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(value: &str, json: bool) -> Args {
        Args {
            value: value.into(),
            cpus: Some(4),
            strict: false,
            json,
        }
    }

    fn json(value: &str) -> serde_json::Value {
        serde_json::from_str(&explain(&args(value, true)).unwrap()).unwrap()
    }

    fn strings(v: &serde_json::Value) -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn json_fields() {
        let v = json("swiotlb=65536,4,force");
        assert_eq!(v["nslabs"], 65536);
        assert_eq!(v["nareas"], 4);
        assert_eq!(v["bytes"], 65536u64 << 11);
        assert_eq!(v["force"], "force");
        assert_eq!(v["pool"], true);
        assert_eq!(v["canonical"], "65536,4,force");
        assert_eq!(v["stored"], "65536,4,force");
        assert_eq!(v["adjustments"], json!([]));
        assert_eq!(v["ignored"], json!([]));
        assert_eq!(v["notes"], json!([]));
        assert_eq!(v["numbers"][0]["field"], "nslabs");
        assert_eq!(v["numbers"][1]["value"], 4);
    }

    #[test]
    fn defaults_follow_cpus() {
        let v = json("force");
        assert_eq!(v["nslabs"], 32768);
        assert_eq!(v["nareas"], 4);
        assert_eq!(v["bytes"], 64u64 << 20);
    }

    /// An adjustment is not a bad value: every one is listed, in plain
    /// words, with exit status 0 unless --strict.
    #[test]
    fn explain_lists_every_adjustment_in_plain_words() {
        let v = json("100");
        assert_eq!(
            strings(&v["adjustments"]),
            [
                "Linux rounds 100 slots up to 128, a whole number of 128-slot segments.",
                "At boot Linux raises 128 slots to 512, so that each of the 4 areas holds a \
                 128-slot segment.",
            ]
        );
        assert_eq!(v["nslabs"], 512);
        let v = json("3000,3,forc");
        let adj = strings(&v["adjustments"]);
        assert_eq!(adj.len(), 3, "{adj:?}");
        assert_eq!(adj[1], "Linux rounds 3 areas up to 4, a power of two.");
        assert!(adj[2].contains("rounds 3072 slots up to 4096"), "{adj:?}");
        let ign = strings(&v["ignored"]);
        assert_eq!(ign.len(), 1);
        assert!(
            ign[0].starts_with("Linux ignores `forc` at byte 7"),
            "{ign:?}"
        );
        assert!(ign[0].contains("not forced"), "{ign:?}");
        // CPUs that are not a power of two.
        let three = Args {
            cpus: Some(3),
            ..args("force", true)
        };
        let v: serde_json::Value = serde_json::from_str(&explain(&three).unwrap()).unwrap();
        assert_eq!(
            strings(&v["adjustments"]),
            [
                "With no area count given, Linux uses one area per possible CPU, rounded up to a \
              power of two: 3 CPUs give 4 areas."
            ]
        );
        // Text: one line each, and never the word "bad".
        let text = explain(&args("100", false)).unwrap();
        assert!(
            text.contains("adjusts: Linux rounds 100 slots up to 128"),
            "{text}"
        );
        assert!(
            text.contains("\n           At boot Linux raises 128 slots to 512"),
            "{text}"
        );
        assert!(!text.contains("bad"), "{text}");
    }

    #[test]
    fn strict_fails_on_what_the_value_itself_changes() {
        let strict = |value: &str| {
            explain(&Args {
                strict: true,
                ..args(value, false)
            })
        };
        let e = strict("1000").unwrap_err().to_string();
        assert!(e.contains("Linux rounds 1000 slots up to 1024"), "{e}");
        assert!(strict("65536,4,force").is_ok());
        // A boot-time step from the CPU count is not the value's doing.
        assert!(strict("256").is_ok());
        let e = strict("65536,").unwrap_err().to_string();
        assert!(e.contains("comma at byte 5"), "{e}");
    }

    #[test]
    fn explain_says_when_a_number_is_octal_or_hexadecimal() {
        let v = json("0x8000,010");
        assert_eq!(
            strings(&v["notes"]),
            [
                "Linux reads `0x8000` (the slot count) as hexadecimal, because it starts with \
                 0x: 32768.",
                "Linux reads `010` (the area count) as octal, because it starts with 0: 8.",
            ]
        );
        assert_eq!(v["numbers"][0]["base"], 16);
        assert_eq!(v["numbers"][1]["base"], 8);
        // "08": octal 0 slots, then 8 areas.
        let v = json("08");
        let notes = strings(&v["notes"]);
        assert!(
            notes[0].contains("`0` (the slot count) as octal")
                && notes[0].contains("stops before `8`"),
            "{notes:?}"
        );
        assert_eq!(v["nareas"], 8);
        // Plain decimal, and a lone 0, need no note.
        assert_eq!(json("1024,0")["notes"], json!([]));
        let v = json("0x");
        assert!(strings(&v["ignored"])[0].contains("`0x` needs a hexadecimal digit"));
    }

    #[test]
    fn noforce_shows_no_pool() {
        let v = json("noforce");
        assert_eq!(v["pool"], false);
        assert_eq!(v["bytes"], 0);
        assert_eq!(v["nslabs"], 0);
        assert_eq!(v["adjustments"], json!([]));
        let text = explain(&args("noforce", false)).unwrap();
        assert!(text.contains("pool:    none"), "{text}");
        assert!(!text.contains("MiB"), "{text}");
        assert!(!text.contains("slots:"), "{text}");
        let v = json("65536,4,noforce");
        assert_eq!(v["pool"], false);
        assert!(strings(&v["notes"])[0].contains("stored but unused"));
    }

    /// Linux skips one comma after the slot count and one before the
    /// word; the words say which and that they change nothing.
    #[test]
    fn explain_matches_the_commas_linux_skips() {
        let v = json(",,");
        assert_eq!(v["nslabs"], 32768);
        assert_eq!(
            strings(&v["ignored"]),
            [
                "The commas at bytes 0 and 1 change nothing: Linux skips the first as the \
              separator after the slot count and the second as the one before `force` or \
              `noforce`, and nothing follows them."
            ]
        );
        assert_eq!(
            strings(&v["notes"]),
            ["This value sets nothing: Linux keeps all its defaults."]
        );
        let v = json("65536,,force");
        assert_eq!(v["force"], "force");
        assert_eq!(v["ignored"], json!([]));
        let v = json(",,,force");
        assert_eq!(v["force"], "default");
        let ign = strings(&v["ignored"]);
        assert!(
            ign[0].starts_with("Linux ignores `,force` at byte 2: one comma too many"),
            "{ign:?}"
        );
        let v = json("65536,,4");
        assert!(strings(&v["ignored"])[0].starts_with("Linux ignores `4` at byte 7"));
    }

    #[test]
    fn explain_reads_the_rfc_high_pool_as_an_area_count() {
        let v = json("327680,3145728,force");
        assert_eq!(v["nareas"], 4_194_304);
        assert_eq!(v["nslabs"], 536_870_912);
        assert_eq!(
            strings(&v["adjustments"]),
            [
                "Linux rounds 3145728 areas up to 4194304, a power of two.",
                "Linux raises 327680 slots to 536870912, so that each of the 4194304 areas \
                 holds a 128-slot segment.",
            ]
        );
        let notes = strings(&v["notes"]);
        assert_eq!(notes.len(), 2, "{notes:?}");
        // 1 TiB: Linux halves what it cannot allocate.
        assert!(
            notes[1].contains("if it cannot get 1 TiB, it halves"),
            "{notes:?}"
        );
        assert!(
            notes[0].starts_with("`3145728` is read as the area count"),
            "{notes:?}"
        );
        assert!(
            notes[0].contains("`swiotlb=327680,force swiotlb.high=3145728`"),
            "{notes:?}"
        );
        assert!(notes[0].contains("6 GiB"), "{notes:?}");
        // An ordinary area count gets no such note, nor an area count
        // that an octal slot count left behind.
        assert_eq!(json("65536,4")["notes"], json!([]));
        assert_eq!(json("08")["notes"].as_array().unwrap().len(), 1);
        // Without force the note suggests the same mode.
        let notes = strings(&json("65536,131072")["notes"]);
        assert!(
            notes[0].contains("`swiotlb=65536 swiotlb.high=131072`"),
            "{notes:?}"
        );
    }

    const MICROVM: &str = "console=ttyS0 reboot=k panic=1 pci=off \
        virtio_mmio.device=4K@0xd0000000:5 swiotlb.region=4M@0x10000000,force";

    #[test]
    fn explain_shows_the_region_of_a_microvm_line() {
        let text = explain(&args(MICROVM, false)).unwrap();
        for want in [
            "swiotlb.region=4M@0x10000000,force",
            "region:  0x10000000..0x10400000 (4 MiB, 4194304 bytes)",
            "base:    0x10000000",
            "end:     0x10400000",
            "slots:   2048 of 2048 bytes",
            "areas:   4 (one per CPU, 4 CPUs), 512 slots each",
            "force:   yes",
            "is read as hexadecimal",
        ] {
            assert!(text.contains(want), "{want:?} in {text}");
        }
        let v = json(MICROVM);
        assert_eq!(v["region_base"], 0x1000_0000u64);
        assert_eq!(v["region_size"], 4u64 << 20);
        assert_eq!(v["nslabs"], 2048);
        assert_eq!(v["force"], "force");
        assert_eq!(v["pool"], true);
        // A lone value has no region.
        assert_eq!(json("65536")["region_base"], serde_json::Value::Null);
        assert!(explain(&Args {
            strict: true,
            ..args(MICROVM, false)
        })
        .is_ok());
    }

    #[test]
    fn explain_says_what_the_line_ignores_and_adjusts() {
        let line =
            "swiotlb=65536,2,noforce swiotlb.region=1M@0x100001 swiotlb.region=4M@01000000000";
        let v = json(line);
        assert_eq!(v["nareas"], 2);
        assert_eq!(v["region_base"], 0o1000000000u64);
        let ign = strings(&v["ignored"]);
        assert!(
            ign[0].contains("given more than once (first at byte 24)"),
            "{ign:?}"
        );
        assert!(
            ign[1].contains("slot count of swiotlb= (65536 slots) is ignored"),
            "{ign:?}"
        );
        assert!(ign[2].contains("noforce is ignored"), "{ign:?}");
        let notes = strings(&v["notes"]);
        assert!(
            notes
                .iter()
                .any(|n| n.contains("`01000000000` (the region's address) is read as octal")),
            "{notes:?}"
        );
        assert!(notes.iter().any(|n| n.contains("needs force")), "{notes:?}");
        // A shrunk region is an adjustment, which --strict refuses.
        let line = "quiet swiotlb.region=1M@0x100001";
        let adj = strings(&json(line)["adjustments"]);
        assert!(
            adj[0].contains("shrunk inward to 0xff800 bytes at 0x100800"),
            "{adj:?}"
        );
        let strict = |value: &str| {
            explain(&Args {
                strict: true,
                ..args(value, false)
            })
        };
        assert!(strict(line).is_err());
        // A region no parser accepts is an error in both modes.
        let e = explain(&args("quiet swiotlb.region=128K@1M", false)).unwrap_err();
        assert!(e.to_string().contains("smaller than one"), "{e}");
        // A line without the keys keeps Linux's defaults.
        let v = json("console=ttyS0 quiet=1");
        assert_eq!(v["nslabs"], 32768);
        // The swiotlb= of a line without a region is explained as alone.
        let v = json("quiet swiotlb=100 x=1");
        assert_eq!(v["nslabs"], 512);
        assert_eq!(v["value"], "100");
    }
}
