//! Plain transcriptions of what the kernel does with the command-line
//! values the core parses, written apart from the core so that the
//! targets can hold it to them: Linux's `swiotlb=` (kernel/dma/swiotlb.c)
//! and `memparse()` (lib/cmdline.c), and the `swiotlb.region=` grammar the
//! core documents on top of `memparse()`.

use swiotlb::cmdline::MIN_REGION_SIZE;
use swiotlb::config::{
    Force, SwiotlbParam, DEFAULT_NSLABS, IO_TLB_SEGSIZE, IO_TLB_SIZE, MAX_NAREAS, MAX_NSLABS,
};

const SEG: u64 = IO_TLB_SEGSIZE as u64;

/// Bytes in a slot.
const SLOT: u64 = IO_TLB_SIZE as u64;

/// Linux's `simple_strtoul(s, &end, 0)` at `s[i..]`: the value (`None`
/// if it does not fit in 64 bits), where it stopped, and the base.
pub fn strtoul(s: &[u8], i: usize) -> (Option<u64>, usize, u32) {
    let at = |k: usize| s.get(k).copied().unwrap_or(0);
    let (base, mut k) = if at(i) == b'0' {
        if at(i + 1).eq_ignore_ascii_case(&b'x') && at(i + 2).is_ascii_hexdigit() {
            (16, i + 2)
        } else {
            (8, i)
        }
    } else {
        (10, i)
    };
    let mut v: Option<u64> = Some(0);
    loop {
        let c = at(k).to_ascii_lowercase();
        let d = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'a'..=b'f' => u32::from(c - b'a') + 10,
            _ => break,
        };
        if d >= base {
            break;
        }
        v = v
            .and_then(|v| v.checked_mul(u64::from(base)))
            .and_then(|v| v.checked_add(u64::from(d)));
        k += 1;
    }
    (v, k, base)
}

/// What Linux stores for a `swiotlb=` value, and whether it stores it
/// exactly as written (nothing adjusted, nothing ignored).
pub struct Linux {
    /// What Linux stores (`default_nslabs`, `default_nareas`, the force
    /// flags).
    pub param: SwiotlbParam,
    /// The slot count as written: its value (`None` past 64 bits) and
    /// base.
    pub nslabs: Option<(Option<u64>, u32)>,
    /// The area count as written.
    pub nareas: Option<(Option<u64>, u32)>,
    /// Nothing adjusted, nothing ignored: what the strict parser accepts.
    pub as_written: bool,
}

/// `setup_io_tlb_npages()`, `swiotlb_adjust_nareas()` and
/// `round_up_default_nslabs()`, step by step, on the value Linux hands
/// the parameter (the text after `swiotlb=`).
pub fn setup_io_tlb_npages(value: &str) -> Linux {
    setup_io_tlb_npages_onto(value, SwiotlbParam::default())
}

/// The same for a later `swiotlb=` on the command line: Linux's globals
/// hold what the earlier ones stored (`prior`), and this value changes
/// only what it names. `force` and `noforce` set two flags; with
/// `swiotlb_force_disable` set no pool is built, so `NoForce` sticks.
pub fn setup_io_tlb_npages_onto(value: &str, prior: SwiotlbParam) -> Linux {
    let all = value.as_bytes();
    // A C string: it ends at the first NUL.
    let s = &all[..all.iter().position(|&b| b == 0).unwrap_or(all.len())];
    let mut clean = !all.is_empty() && s.len() == all.len();
    let mut out = Linux {
        param: SwiotlbParam::default(),
        nslabs: None,
        nareas: None,
        as_written: false,
    };
    let mut nslabs: Option<u64> = prior.nslabs;
    let mut i = 0;
    if s.first().is_some_and(u8::is_ascii_digit) {
        let (v, end, base) = strtoul(s, 0);
        out.nslabs = Some((v, base));
        // Past MAX_NSLABS the crate saturates where Linux wraps.
        let n = v.filter(|&v| v <= MAX_NSLABS).unwrap_or(MAX_NSLABS);
        clean &= v == Some(n) && n != 0 && n % SEG == 0;
        nslabs = Some(n.div_ceil(SEG) * SEG);
        i = end;
    }
    let comma1 = s.get(i) == Some(&b',');
    if comma1 {
        i += 1;
    }
    let mut nareas = prior.nareas;
    if s.get(i).is_some_and(u8::is_ascii_digit) {
        let (v, end, base) = strtoul(s, i);
        out.nareas = Some((v, base));
        // Past MAX_NAREAS the crate saturates where Linux truncates.
        let raw = v
            .filter(|&v| v <= u64::from(MAX_NAREAS))
            .unwrap_or(u64::from(MAX_NAREAS));
        clean &= v == Some(raw) && raw != 0 && raw.is_power_of_two();
        let a = raw.max(1).next_power_of_two();
        let before = nslabs.unwrap_or(DEFAULT_NSLABS);
        let after = if before < SEG * a {
            SEG * a
        } else {
            before.next_power_of_two()
        };
        if after != before {
            clean = false;
            nslabs = Some(after);
        }
        nareas = Some(u32::try_from(a).expect("at most MAX_NAREAS"));
        i = end;
    }
    let comma2 = s.get(i) == Some(&b',');
    if comma2 {
        i += 1;
    }
    let force = match &s[i..] {
        b"force" if prior.force == Force::NoForce => Force::NoForce,
        b"force" => Force::Force,
        b"noforce" => Force::NoForce,
        rest => {
            // Text Linux ignores, or commas nothing follows.
            clean &= rest.is_empty() && !comma2 && !(comma1 && out.nareas.is_none());
            prior.force
        }
    };
    out.param = SwiotlbParam {
        nslabs,
        nareas,
        force,
    };
    out.as_written = clean;
    out
}

/// Linux's `memparse()` at `s[i..]`: a number as `strtoul` reads it, then
/// at most one of `K M G T P E` (either case), each 1024 times the one
/// before. `None` where the bytes reach 2^64 (Linux wraps; the core
/// refuses), else the value and where it stopped.
pub fn memparse(s: &[u8], i: usize) -> Option<(u64, usize)> {
    let (v, end, _) = strtoul(s, i);
    let v = v?;
    let shift = match s.get(end).map(u8::to_ascii_uppercase) {
        Some(b'K') => 10,
        Some(b'M') => 20,
        Some(b'G') => 30,
        Some(b'T') => 40,
        Some(b'P') => 50,
        Some(b'E') => 60,
        _ => return Some((v, end)),
    };
    let bytes = u128::from(v) << shift;
    Some((u64::try_from(bytes).ok()?, end + 1))
}

/// A `swiotlb.region=` value as the core documents it: `(base, size,
/// force)` in whole slots, and whether it had to be shrunk to them; `None`
/// for a value no parser accepts.
pub fn region(value: &str) -> Option<((u64, u64, bool), bool)> {
    let s = value.as_bytes();
    if !s.first().is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let (size, end) = memparse(s, 0)?;
    if s.get(end) != Some(&b'@') || !s.get(end + 1).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let (base, end) = memparse(s, end + 1)?;
    let force = match &s[end..] {
        b"" => false,
        b",force" => true,
        _ => return None,
    };
    let last = u128::from(base) + u128::from(size);
    if last > 1 << 64 {
        return None;
    }
    let first = u128::from(base).div_ceil(u128::from(SLOT)) * u128::from(SLOT);
    let top = last / u128::from(SLOT) * u128::from(SLOT);
    let whole = top.saturating_sub(first);
    if whole < u128::from(MIN_REGION_SIZE) {
        return None;
    }
    let shrunk = first != u128::from(base) || top != last;
    Some((
        (
            u64::try_from(first).ok()?,
            u64::try_from(whole).ok()?,
            force,
        ),
        shrunk,
    ))
}
