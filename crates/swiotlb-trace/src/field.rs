//! Numbers, lists and `key=value` fields as the kernel prints them, read
//! from bytes without allocating (lists excepted, which become the
//! record's vectors).

use crate::error::ErrorKind;
use crate::event::{Attrs, Direction};

/// Trim ASCII spaces and tabs (and a `\r`) at both ends.
pub(crate) fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t' | b'\r' | b'\n', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t' | b'\r' | b'\n'] = s {
        s = rest;
    }
    s
}

/// `%llx` (with or without `0x`, either case), at most 64 bits.
pub(crate) fn hex(s: &[u8]) -> Option<u64> {
    let s = s
        .strip_prefix(b"0x")
        .or_else(|| s.strip_prefix(b"0X"))
        .unwrap_or(s);
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    let mut v = 0u64;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(d);
    }
    Some(v)
}

/// An unsigned decimal, at most 64 bits.
pub(crate) fn dec(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut v = 0u64;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(v)
}

/// A signed decimal that fits an `i32`.
pub(crate) fn dec_i32(s: &[u8]) -> Option<i32> {
    let (neg, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    let v = i64::try_from(dec(digits)?).ok()?;
    i32::try_from(if neg { -v } else { v }).ok()
}

/// `SECONDS[.FRACTION]` in nanoseconds (up to nine fraction digits).
pub(crate) fn timestamp(s: &[u8]) -> Option<u64> {
    let (secs, frac) = match memchr::memchr(b'.', s) {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => return dec(s),
    };
    if frac.is_empty() || frac.len() > 9 {
        return None;
    }
    let scale = 10u64.pow(9 - frac.len() as u32);
    dec(secs)?
        .checked_mul(1_000_000_000)?
        .checked_add(dec(frac)? * scale)
}

/// `{0x1,0x2}` (`__print_array`).
pub(crate) fn list<T>(s: &[u8], wrap: fn(u64) -> T) -> Option<Vec<T>> {
    let inner = s.strip_prefix(b"{")?.strip_suffix(b"}")?;
    if inner.is_empty() {
        return Some(Vec::new());
    }
    let mut v = Vec::with_capacity(memchr::memchr_iter(b',', inner).count() + 1);
    for e in inner.split(|&c| c == b',') {
        v.push(wrap(hex(e)?));
    }
    Some(v)
}

/// `S/N`.
pub(crate) fn count(s: &[u8]) -> Option<(u32, u32)> {
    let i = memchr::memchr(b'/', s)?;
    let a = u32::try_from(dec(&s[..i])?).ok()?;
    let b = u32::try_from(dec(&s[i + 1..])?).ok()?;
    Some((a, b))
}

/// `__print_symbolic` of `enum dma_data_direction`.
pub(crate) fn direction(s: &[u8]) -> Option<Direction> {
    Some(match s {
        b"BIDIRECTIONAL" => Direction::Bidirectional,
        b"TO_DEVICE" => Direction::ToDevice,
        b"FROM_DEVICE" => Direction::FromDevice,
        b"NONE" => Direction::None,
        _ => return None,
    })
}

/// `__print_flags` of `DMA_ATTR_*`: `|`-joined names, unknown bits as
/// `0x..`, empty when none. A name this crate does not know is noted, not
/// an error, so that a newer kernel's attribute does not stop a replay.
pub(crate) fn attrs(s: &[u8]) -> Option<Attrs> {
    let mut bits = 0;
    let mut unknown = false;
    if s.is_empty() {
        return Some(Attrs::default());
    }
    for name in s.split(|&c| c == b'|') {
        if let Some((_, b)) = Attrs::NAMES.iter().find(|(n, _)| n.as_bytes() == name) {
            bits |= b;
        } else if name.starts_with(b"0x") {
            bits |= hex(name)?;
        } else if !name.is_empty() && name.iter().all(|c| c.is_ascii_uppercase() || *c == b'_') {
            unknown = true;
        } else {
            return None;
        }
    }
    Some(Attrs::from_parts(bits, unknown))
}

/// The field keys of the DMA events.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Key {
    Dir,
    DmaAddr,
    DmaAddrs,
    Size,
    Sizes,
    PhysAddr,
    PhysAddrs,
    Attrs,
    Nents,
    Ents,
    Err,
    VirtAddr,
    Flags,
    DmaMask,
    DevAddr,
}

/// Each key's name, in the order of [`Key`].
const KEYS: [(&str, Key); 15] = [
    ("dir", Key::Dir),
    ("dma_addr", Key::DmaAddr),
    ("dma_addrs", Key::DmaAddrs),
    ("size", Key::Size),
    ("sizes", Key::Sizes),
    ("phys_addr", Key::PhysAddr),
    ("phys_addrs", Key::PhysAddrs),
    ("attrs", Key::Attrs),
    ("nents", Key::Nents),
    ("ents", Key::Ents),
    ("err", Key::Err),
    ("virt_addr", Key::VirtAddr),
    ("flags", Key::Flags),
    ("dma_mask", Key::DmaMask),
    ("dev_addr", Key::DevAddr),
];

impl Key {
    pub(crate) fn name(self) -> &'static str {
        KEYS[self as usize].0
    }

    fn of(token: &[u8]) -> Option<(Key, &[u8])> {
        let eq = memchr::memchr(b'=', token)?;
        let key = match &token[..eq] {
            b"dir" => Key::Dir,
            b"dma_addr" => Key::DmaAddr,
            b"dma_addrs" => Key::DmaAddrs,
            b"size" => Key::Size,
            b"sizes" => Key::Sizes,
            b"phys_addr" => Key::PhysAddr,
            b"phys_addrs" => Key::PhysAddrs,
            b"attrs" => Key::Attrs,
            b"nents" => Key::Nents,
            b"ents" => Key::Ents,
            b"err" => Key::Err,
            b"virt_addr" => Key::VirtAddr,
            b"flags" => Key::Flags,
            b"dma_mask" => Key::DmaMask,
            b"dev_addr" => Key::DevAddr,
            _ => return None,
        };
        debug_assert_eq!(key.name().as_bytes(), &token[..eq]);
        Some((key, &token[eq + 1..]))
    }
}

/// The fields of one event: the device name, each known `key=value`
/// (the first of a repeated key), and the bare words (`[TRUNCATED]`,
/// `FORCE`). Keys this crate does not know are skipped, so that a field a
/// later kernel adds does not break parsing.
pub(crate) struct Fields<'a> {
    pub(crate) device: &'a [u8],
    vals: [Option<&'a [u8]>; KEYS.len()],
    pub(crate) truncated: bool,
    pub(crate) last_word: Option<&'a [u8]>,
}

impl<'a> Fields<'a> {
    /// `DEV key=value ...`: the device is the text before the first known
    /// key (so a name with spaces survives).
    pub(crate) fn parse(s: &'a [u8]) -> Result<Fields<'a>, ErrorKind> {
        let s = trim(s);
        let mut f = Fields {
            device: &[],
            vals: [None; KEYS.len()],
            truncated: false,
            last_word: None,
        };
        let mut pos = 0;
        let mut in_device = true;
        while pos < s.len() {
            let end = memchr::memchr(b' ', &s[pos..]).map_or(s.len(), |i| pos + i);
            let token = &s[pos..end];
            if let Some((key, value)) = Key::of(token) {
                if in_device {
                    f.device = trim(&s[..pos]);
                    in_device = false;
                }
                let slot = &mut f.vals[key as usize];
                if slot.is_none() {
                    *slot = Some(value);
                }
            } else if !in_device && !token.is_empty() {
                if token == b"[TRUNCATED]" {
                    f.truncated = true;
                }
                f.last_word = Some(token);
            }
            pos = end + 1;
        }
        if in_device || f.device.is_empty() {
            return Err(ErrorKind::Device);
        }
        Ok(f)
    }

    pub(crate) fn get(&self, k: Key) -> Option<&'a [u8]> {
        self.vals[k as usize]
    }

    pub(crate) fn req(&self, k: Key) -> Result<&'a [u8], ErrorKind> {
        self.get(k).ok_or(ErrorKind::MissingField(k.name()))
    }

    pub(crate) fn hex(&self, k: Key) -> Result<u64, ErrorKind> {
        hex(self.req(k)?).ok_or(ErrorKind::BadField(k.name()))
    }

    pub(crate) fn dec(&self, k: Key) -> Result<u64, ErrorKind> {
        dec(self.req(k)?).ok_or(ErrorKind::BadField(k.name()))
    }

    pub(crate) fn dir(&self) -> Result<Direction, ErrorKind> {
        direction(self.req(Key::Dir)?).ok_or(ErrorKind::BadField("dir"))
    }

    pub(crate) fn opt_dir(&self) -> Result<Option<Direction>, ErrorKind> {
        match self.get(Key::Dir) {
            None => Ok(None),
            Some(_) => self.dir().map(Some),
        }
    }

    pub(crate) fn attrs(&self) -> Result<Attrs, ErrorKind> {
        attrs(self.req(Key::Attrs)?).ok_or(ErrorKind::BadField("attrs"))
    }

    pub(crate) fn list<T>(&self, k: Key, wrap: fn(u64) -> T) -> Result<Vec<T>, ErrorKind> {
        list(self.req(k)?, wrap).ok_or(ErrorKind::BadField(k.name()))
    }

    pub(crate) fn count(&self, k: Key) -> Result<Option<(u32, u32)>, ErrorKind> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => count(v).map(Some).ok_or(ErrorKind::BadField(k.name())),
        }
    }
}
